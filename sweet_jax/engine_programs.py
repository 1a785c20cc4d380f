"""The jitted programs of the adaptive engine (adaptive.py) and what they share: one segment's forward, the
queue rings, the host-scheduled segment call (`stage`) and the full model (`full`). The device-scheduled
chunk program that runs many segment calls in one program is in device_stream.py.

Queue ring: {'payload': ..., 'index', 'last', 'streak'}, each with a leading axis of `capacity` rows; the
payload is the hidden state [rows, seq, H] and mask [rows, seq] (sweet / early_exit) or the token ids, mask and
types [rows, seq] (multi_model, whose members re-encode from the embeddings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax
from encoder_jax import EncoderConfig
from sweet_jax import curves, exits

PAYLOAD_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def default_buckets(batch_size: int, count: int = 8) -> tuple[int, ...]:
  """Row counts a partial batch is padded up to: ceil(batch_size * k / count), k = 1..count (64 -> 8, 16, ...)."""
  return tuple(sorted({max(1, math.ceil(batch_size * k / count)) for k in range(1, count + 1)}))


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the compiled programs depend on, hashable so engines of one model share compilations.
  capacity: rows of every queue ring (2 x batch_size)."""
  encoder_config: EncoderConfig
  exit_config: exits.ExitConfig
  multi_model: bool
  capacity: int

  @property
  def batch_size(self) -> int:
    return self.capacity // 2


def forward(spec: Spec, index: int, params, constants, payload):
  """Segment (or member) `index` on payload rows -> (payload for the next segment, logits [rows, C])."""
  cfg, ecfg = spec.encoder_config, spec.exit_config
  mask = payload['attention_mask']
  if spec.multi_model:
    logits = exits.model_forward(cfg, ecfg, params['models'][index], payload, ecfg.exit_layers[index],
                                 constants=constants)
    return payload, logits
  hidden = payload['hidden'] if index else encoder_jax.embed(
      cfg, params['encoder'], payload['input_ids'], mask, payload['token_type_ids'])
  hidden, logits = exits.segment_forward(cfg, ecfg, params, hidden, mask, index, constants=constants)
  return {'hidden': hidden, 'attention_mask': mask}, logits


def empty_ring(spec: Spec, seq: int) -> dict[str, Any]:
  """Device buffers of an empty queue at sequence length seq (`capacity` rows)."""
  cap, cfg = spec.capacity, spec.encoder_config
  if spec.multi_model:
    payload = {'input_ids': jnp.zeros((cap, seq), jnp.int32), 'attention_mask': jnp.ones((cap, seq), jnp.int32),
               'token_type_ids': jnp.zeros((cap, seq), jnp.int32)}
  else:  # a stale or empty row must not produce NaN: unit mask, zero hidden state
    payload = {'hidden': jnp.zeros((cap, seq, cfg.hidden_size), jnp.dtype(cfg.dtype)),
               'attention_mask': jnp.ones((cap, seq), jnp.int32)}
  ints = lambda fill: jnp.full((cap,), fill, jnp.int32)  # separate buffers: a queue is donated
  return {'payload': payload, 'index': ints(0), 'last': ints(-1), 'streak': ints(0)}


def input_rows(batch, offset: int, rows: int) -> dict[str, Any]:
  """An input batch (int32 [b, seq] input_ids, attention_mask, token_type_ids; optional example_mask [b])
  padded to `rows` >= b rows: {'payload', 'index' int32 [rows] (offset + row), 'valid' bool [rows]
  (example_mask > 0, False for the padding)}, numpy."""
  n = batch['input_ids'].shape[0]
  valid = np.ones(n, bool) if 'example_mask' not in batch else np.asarray(batch['example_mask']) > 0
  pad = lambda a: np.concatenate([a, np.repeat(a[:1], rows - n, 0)]) if rows > n else a
  payload = {k: pad(np.asarray(batch[k] if k in batch else np.zeros_like(batch['input_ids']), np.int32))
             for k in PAYLOAD_KEYS}
  return {'payload': payload, 'index': pad(np.arange(offset, offset + n, dtype=np.int32)),
          'valid': np.concatenate([valid, np.zeros(rows - n, bool)])}


def push(ring, rows, keep, end, capacity: int, at: tuple = ()):
  """Ring with the `keep` rows of `rows` written to consecutive ring positions from `end` on (wrapping).
  ring, rows: pytrees with leading axes [capacity] and [r]; keep: bool [r]; end: int32 scalar. at: leading
  indices of a ring within stacked rings (device_stream.Queues: (ring index,) into leaves [E-1, capacity, ...])."""
  # The rows not kept go to an out-of-range row, which mode='drop' skips.
  where = jnp.where(keep, (end + jnp.cumsum(keep) - 1) % capacity, capacity)
  return jax.tree.map(lambda d, r: d.at[(*at, where)].set(r.astype(d.dtype), mode='drop'), ring, rows)


def take(ring, head, rows: int, capacity: int, at: tuple = ()):
  """The `rows` ring rows from position `head` on (wrapping): pytree with leading axis [rows]. at: as `push`."""
  positions = (head + jnp.arange(rows)) % capacity
  return jax.tree.map(lambda a: a[(*at, positions)], ring)


@functools.partial(jax.jit, static_argnames=('spec', 'index', 'rows'), donate_argnames=('dst',))
def stage(spec: Spec, params, constants, temperatures, rule, threshold, keep_all, src, src_head, src_take, dst,
          dst_end, *, index: int, rows: int):
  """One host-scheduled segment call on `rows` rows (modes host_stream, compact, calm).

  Exit 0: src is the input batch (input_rows), padded to `rows`. Later exits: src is the queue of this exit,
  a ring of spec.capacity rows; the `src_take` rows from ring position src_head on are real (the rest of
  `rows` is padding). Rows that stay on (all valid rows when keep_all: CALM's mode) are scattered into the
  next exit's queue `dst` from ring position dst_end on.
  Returns ({'leave' bool [rows], 'pred' int32 [rows], 'index' int32 [rows], 'logits' float32 [rows, C],
  'kept' int32}, updated dst).
  """
  if index == 0:
    x, valid, state = src, src['valid'], curves.initial_state(rows)
  else:
    x = take(src, src_head, rows, spec.capacity)
    valid = jnp.arange(rows) < src_take
    state = {'last': x['last'], 'streak': x['streak']}
  payload, logits = forward(spec, index, params, constants, x['payload'])
  last = index == spec.exit_config.num_exits - 1
  leave, pred, state = curves.decide(rule, logits, temperatures[index], threshold, state, is_last=last)
  out = {'leave': leave & valid, 'pred': pred, 'index': x['index'], 'logits': logits}
  if last:
    return out, dst
  keep = valid & (~leave | keep_all)
  dst = push(dst, {'payload': payload, 'index': x['index'], **state}, keep, dst_end, spec.capacity)
  out['kept'] = keep.sum()
  return out, dst


@functools.partial(jax.jit, static_argnames=('spec',))
def full(spec: Spec, params, constants, payload):
  """The full model: embeddings, every layer up to the last exit, the last exit's head. -> [rows, C].

  Every head softmax, constant or not in the exit model: the reference measured speedups are taken against
  is the model deployed with neither early exits nor constant heads (curves.full_model_flops), so that
  variants with and without constant heads share it. A constant head's query and key weights are still
  there (they get no gradient in training): its logits are for timing, not for scoring.
  """
  del constants  # every head softmax: no constant matrices
  cfg, ecfg = spec.encoder_config.replace(head_kinds=None), spec.exit_config
  if spec.multi_model:
    return exits.model_forward(cfg, ecfg, params['models'][-1], payload, ecfg.exit_layers[-1])
  mask = payload['attention_mask']
  hidden = encoder_jax.embed(cfg, params['encoder'], payload['input_ids'], mask, payload['token_type_ids'])
  for i, (start, stop) in enumerate(ecfg.segments()):  # each segment with its own shared parameters (SWEET)
    hidden = encoder_jax.run_layers(cfg, exits.segment_encoder(params, i), hidden, mask, start, stop)[-1]
  return exits.apply_head(params['heads'][-1], hidden, mask, ecfg.pooling)
