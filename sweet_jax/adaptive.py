"""Real adaptive inference: run segment by segment, and let confident examples leave between segments.

Three ways to run the same exits (all return, per example, the prediction and the exit it left at, which
equal what curves.assign_exits derives offline from all-exit logits with the same temperatures and rule):

  'stream'   continuous batching (the default). Each exit after the first has a queue (a ring buffer on
             the device, capacity 2 x batch_size) of examples waiting for its segment. A segment runs only
             when its queue holds a full batch, so every segment works at the batch size the full model
             runs at; examples that stay on are scattered into the next queue inside the same jitted call.
             At the end of the stream the queues are flushed in order, each remainder padded up to a bucket.
  'compact'  batch compaction, one input batch at a time: after each exit the confident examples leave and
             the rest are gathered into a smaller batch, padded up to the next bucket size, for the next
             segment; every batch is finished before the next one starts (bounded latency per batch).
  'calm'     no compaction (as t5x's CALM): the whole batch runs each segment until its least confident
             example has left. Shown for comparison: its savings vanish as the batch grows.

Why 'stream' is the default. Compaction alone shrinks the batch at every exit: a batch of 64 of which 60%
leave at the first exit sends ~26 examples to segment 1, then ~13, ~6... Each stage then pays for padding
up to its bucket (on average half a bucket step, a large share of a small batch) and runs at a small batch
where per-example throughput is lower (on accelerators much lower), so measured speedup trails the
FLOPs-ideal one most exactly where early exit saves most. Continuous batching (the queue in front of each
segment, as LLM servers batch decode steps) runs every segment at the full batch size except for one
padded flush per segment at the end of the stream, so the per-example cost of every segment matches the
full model's and measured speedup approaches 1 / flops_fraction. The cost is latency: an example may wait in
a queue for later batches, and results come out of order (run() puts them back in input order). Use
'compact' when each batch must be answered before the next arrives. Measured (bench/adaptive_speed.py,
bench/RESULTS.md; MiniLM, exits after layers 1, 2, 4, 6, 2 CPU cores): at batch 64, stream reaches 0.87-0.93
of the FLOPs-ideal speedup wherever at most 70% of the layers run, compact 0.78-1.0, calm 0.20-0.51.

Mechanics. The state of a queued example is its hidden state [seq, H] and mask (sweet / early_exit; for
multi_model its token ids, since each member re-encodes from the embeddings), its index in the input stream,
and the exit rule's state (patience). Gather from the source queue, the segment, the exit decision and the
scatter into the destination queue are one jitted call per (segment, rows, seq); rows is the batch size or
a bucket size, so compilations are bounded by segments x buckets x sequence lengths; `warmup` compiles them
all before timing. The destination queue is donated, so the scatter writes in place. The host reads back
only the per-row exit flags, predictions and indices (a few hundred bytes), which also tells it how many
rows the next queue holds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax
from encoder_jax import EncoderConfig
from sweet_jax import curves, exits

MODES = ('stream', 'compact', 'calm')
_PAYLOAD_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def default_buckets(batch_size: int, count: int = 8) -> tuple[int, ...]:
  """Row counts a partial batch is padded up to: ceil(batch_size * k / count), k = 1..count (64 -> 8, 16, ...)."""
  return tuple(sorted({max(1, math.ceil(batch_size * k / count)) for k in range(1, count + 1)}))


@dataclasses.dataclass
class Result:
  """predictions, exit_index: int32 [N] in input order (-1 for rows whose example_mask is 0)."""
  predictions: np.ndarray
  exit_index: np.ndarray
  stats: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What the compiled stage programs depend on, hashable so engines of one model share compilations."""
  encoder_config: EncoderConfig
  exit_config: exits.ExitConfig
  multi_model: bool
  capacity: int


def _forward(spec: _Spec, index: int, params, constants, payload):
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


@functools.partial(jax.jit, static_argnames=('spec', 'index', 'rows'), donate_argnames=('dst',))
def _stage(spec: _Spec, params, constants, temperatures, rule, threshold, keep_all, src, src_head, src_take, dst,
           dst_end, *, index: int, rows: int):
  """One segment call on `rows` rows.

  Exit 0: src is the input batch (payload, 'index', 'valid'), padded to `rows`. Later exits: src is the
  queue of this exit, a ring of spec.capacity rows; the `src_take` rows from ring position src_head on are
  real (the rest of `rows` is padding). Rows that stay on (all valid rows when keep_all: CALM's mode) are
  scattered into the next exit's queue `dst` from ring position dst_end on.
  Returns ({'leave' bool [rows], 'pred' int32 [rows], 'index' int32 [rows], 'kept' int32}, updated dst).
  """
  positions = jnp.arange(rows)
  if index == 0:
    x, valid, state = src, src['valid'], curves.initial_state(rows)
  else:
    take = (src_head + positions) % spec.capacity
    x = jax.tree.map(lambda a: a[take], src)
    valid = positions < src_take
    state = {'last': x['last'], 'streak': x['streak']}
  payload, logits = _forward(spec, index, params, constants, x['payload'])
  last = index == spec.exit_config.num_exits - 1
  leave, pred, state = curves.decide(rule, logits, temperatures[index], threshold, state, is_last=last)
  out = {'leave': leave & valid, 'pred': pred, 'index': x['index']}
  if last:
    return out, dst
  keep = valid & (~leave | keep_all)
  # Survivors go to consecutive ring positions; the rest to an out-of-range row, which mode='drop' skips.
  where = jnp.where(keep, (dst_end + jnp.cumsum(keep) - 1) % spec.capacity, spec.capacity)
  row = {'payload': payload, 'index': x['index'], **state}
  dst = jax.tree.map(lambda d, r: d.at[where].set(r.astype(d.dtype), mode='drop'), dst, row)
  out['kept'] = keep.sum()
  return out, dst


@functools.partial(jax.jit, static_argnames=('spec',))
def _full(spec: _Spec, params, constants, payload):
  """The full model: embeddings, every layer up to the last exit, the last exit's head. -> [rows, C]."""
  cfg, ecfg = spec.encoder_config, spec.exit_config
  if spec.multi_model:
    return exits.model_forward(cfg, ecfg, params['models'][-1], payload, ecfg.exit_layers[-1],
                               constants=constants)
  mask = payload['attention_mask']
  hidden = encoder_jax.embed(cfg, params['encoder'], payload['input_ids'], mask, payload['token_type_ids'])
  for i, (start, stop) in enumerate(ecfg.segments()):  # each segment with its own shared parameters (SWEET)
    hidden = encoder_jax.run_layers(cfg, exits.segment_encoder(params, i), hidden, mask, start, stop,
                                    constants=constants)[-1]
  return exits.apply_head(params['heads'][-1], hidden, mask, ecfg.pooling)


class AdaptiveEngine:
  """Adaptive inference of an exit model (sweet / early_exit) or a multi_model cascade.

  Args:
    encoder_config, exit_config: the model.
    params: exits.init_exit_model layout (sweet, early_exit) or exits.init_multi_model layout (multi_model).
    method: 'sweet' | 'early_exit' | 'multi_model'.
    temperatures: [E] per-exit temperatures (None: ones).
    rule: 'confidence' | 'entropy' | 'patience' (see curves.decide).
    batch_size: rows of every full segment call ('stream'), and the largest bucket.
    buckets: row counts partial batches are padded up to (default: default_buckets(batch_size)).
    constants: PAPA constant attention matrices, when the encoder has constant heads.
  Engines of the same model, batch size and buckets share compiled programs (whatever the rule, threshold
  or temperatures: those are inputs, not constants of the program).
  """

  def __init__(self, encoder_config: EncoderConfig, exit_config: exits.ExitConfig, params, *, method: str,
               temperatures=None, rule: str = 'confidence', batch_size: int = 64,
               buckets: Sequence[int] | None = None, constants=None):
    if method not in curves.METHODS:
      raise ValueError(f'Unknown method {method!r}; choose from {curves.METHODS}.')
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    self.rule = jnp.int32(curves.rule_id(rule))
    self.method, self.batch_size = method, batch_size
    self.encoder_config, self.exit_config = encoder_config, exit_config
    # Onto the device once: numpy leaves (as load_pretrained returns) would be copied in at every call.
    self.params, self.constants = jax.device_put((params, constants))
    self.num_exits = exit_config.num_exits
    temps = np.ones(self.num_exits) if temperatures is None else np.asarray(temperatures)
    self.temperatures = jnp.asarray(temps, jnp.float32).reshape(self.num_exits)
    self.buckets = tuple(sorted(b for b in set(buckets or default_buckets(batch_size)) if b < batch_size))
    self.buckets += (batch_size,)
    self.capacity = 2 * batch_size  # a queue holds < batch_size rows, plus at most one call's survivors
    self.spec = _Spec(encoder_config, exit_config, method == 'multi_model', self.capacity)
    self._queues: dict[int, list] = {}

  # --------------------------------------------------------------------------------------- host side

  def _bucket(self, n: int) -> int:
    return next(b for b in self.buckets if b >= n)

  def _queue(self, seq: int):
    """An empty queue for exits >= 1 at sequence length seq (ring buffer of `capacity` rows)."""
    cap, cfg = self.capacity, self.encoder_config
    if self.spec.multi_model:
      payload = {'input_ids': jnp.zeros((cap, seq), jnp.int32), 'attention_mask': jnp.ones((cap, seq), jnp.int32),
                 'token_type_ids': jnp.zeros((cap, seq), jnp.int32)}
    else:  # a stale or empty row must not produce NaN: unit mask, zero hidden state
      payload = {'hidden': jnp.zeros((cap, seq, cfg.hidden_size), jnp.dtype(cfg.dtype)),
                 'attention_mask': jnp.ones((cap, seq), jnp.int32)}
    ints = lambda fill: jnp.full((cap,), fill, jnp.int32)  # separate buffers: the queue is donated
    return {'payload': payload, 'index': ints(0), 'last': ints(-1), 'streak': ints(0)}

  def _input(self, batch, offset: int, rows: int):
    """An input batch padded to `rows` rows: payload, global 'index' and 'valid' (example_mask > 0)."""
    n = batch['input_ids'].shape[0]
    valid = np.ones(n, bool) if 'example_mask' not in batch else np.asarray(batch['example_mask']) > 0
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], rows - n, 0)]) if rows > n else a
    payload = {k: pad(np.asarray(batch[k] if k in batch else np.zeros_like(batch['input_ids']), np.int32))
               for k in _PAYLOAD_KEYS}
    return {'payload': payload, 'index': pad(np.arange(offset, offset + n, dtype=np.int32)),
            'valid': np.concatenate([valid, np.zeros(rows - n, bool)])}

  def run(self, batches: Iterable[dict[str, np.ndarray]], threshold: float, *, mode: str = 'stream') -> Result:
    """Adaptive inference over batches (dicts of int32 [b, seq] input_ids, attention_mask, token_type_ids;
    optionally example_mask [b], rows with 0 are skipped), b <= batch_size.

    Returns predictions and exit indices [N] (N = total rows, input order) and stats per exit: segment
    'calls', 'rows' computed (padding and, for 'calm', examples that already left included) and examples
    that 'left' there.
    """
    if mode not in MODES:
      raise ValueError(f'Unknown mode {mode!r}; choose from {MODES}.')
    E, B, cap = self.num_exits, self.batch_size, self.capacity
    thr, calm = jnp.float32(threshold), mode == 'calm'
    keep_all = jnp.bool_(calm)
    stats = {'calls': [0] * E, 'rows': [0] * E, 'left': [0] * E}
    got_index, got_pred, got_exit = [], [], []
    queues = self._queues  # seq -> per exit i >= 1: [ring, head, count] (entry 0 unused)
    for q in queues.values():  # rings are kept between runs (no allocation per run); empty them
      for entry in q[1:]:
        entry[1] = entry[2] = 0
    pending = {}  # calm: global index -> still in (the queue carries rows that already left)

    def call(i, seq, src, take, rows):
      q = queues[seq]
      dst, dst_end = (None, 0) if i == E - 1 else (q[i + 1][0], (q[i + 1][1] + q[i + 1][2]) % cap)
      out, dst = _stage(self.spec, self.params, self.constants, self.temperatures, self.rule, thr, keep_all,
                        src, 0 if i == 0 else q[i][1], take, dst, dst_end, index=i, rows=rows)
      out = jax.device_get(out)
      leave = out['leave']
      if calm:  # rows that left earlier ride along; record each example's first exit only
        leave = leave & np.array([pending.get(int(k), False) for k in out['index']])
        pending.update((int(k), False) for k in out['index'][leave])
      got_index.append(out['index'][leave])
      got_pred.append(out['pred'][leave])
      got_exit.append(np.full(int(leave.sum()), i, np.int32))
      stats['calls'][i] += 1
      stats['rows'][i] += rows
      stats['left'][i] += int(leave.sum())
      if i > 0:
        q[i][1], q[i][2] = (q[i][1] + take) % cap, q[i][2] - take
      if i < E - 1:
        q[i + 1][0] = dst
        q[i + 1][2] += int(out['kept'])
        if calm and not any(pending.values()):  # the whole batch has left: CALM stops here
          q[i + 1][2] = 0

    def drain(seq, full_only):
      q = queues[seq]
      for i in range(1, E):
        while q[i][2] >= B or (not full_only and q[i][2] > 0):
          take = min(q[i][2], B)
          call(i, seq, q[i][0], take, B if take == B else self._bucket(take))

    total = 0
    for batch in batches:
      n, seq = batch['input_ids'].shape
      if n > B:
        raise ValueError(f'A batch of {n} rows exceeds the engine batch_size {B}.')
      if seq not in queues:
        queues[seq] = [None] + [[self._queue(seq), 0, 0] for _ in range(1, E)]
      x = self._input(batch, total, self._bucket(n))
      if calm:
        pending.clear()
        pending.update({int(k): True for k in x['index'][x['valid']]})
      call(0, seq, x, n, self._bucket(n))
      drain(seq, full_only=(mode == 'stream'))
      total += n
    for seq in queues:
      drain(seq, full_only=False)

    predictions = np.full(total, -1, np.int32)
    exit_index = np.full(total, -1, np.int32)
    if got_index:
      idx = np.concatenate(got_index)
      predictions[idx] = np.concatenate(got_pred)
      exit_index[idx] = np.concatenate(got_exit)
    return Result(predictions, exit_index, stats)

  def run_full(self, batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
    """The full model (single final exit) on every batch: predictions int32 [N] (the timing baseline)."""
    out = []
    for batch in batches:
      payload = {k: np.asarray(batch[k] if k in batch else np.zeros_like(batch['input_ids']), np.int32)
                 for k in _PAYLOAD_KEYS}
      out.append(np.asarray(jnp.argmax(_full(self.spec, self.params, self.constants, payload), -1)))
    return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)

  def warmup(self, seq_lengths: Iterable[int], *, full: bool = True) -> float:
    """Compiles (and runs once on dummy rows) every program run() and run_full() can call at these sequence
    lengths, so that timed runs exclude compilation. Returns the seconds spent."""
    start = time.perf_counter()
    thr, no = jnp.float32(0.5), jnp.bool_(False)
    for seq in sorted(set(int(s) for s in seq_lengths)):
      if seq not in self._queues:
        self._queues[seq] = [None] + [[self._queue(seq), 0, 0] for _ in range(1, self.num_exits)]
      dummy = {'input_ids': np.zeros((self.batch_size, seq), np.int32),
               'attention_mask': np.ones((self.batch_size, seq), np.int32),
               'token_type_ids': np.zeros((self.batch_size, seq), np.int32)}
      if full:
        self.run_full([dummy])
      for rows in self.buckets:
        src = self._input({k: v[:rows] for k, v in dummy.items()}, 0, rows)
        for i in range(self.num_exits):
          dst = self._queue(seq) if i < self.num_exits - 1 else None
          out, dst = _stage(self.spec, self.params, self.constants, self.temperatures, self.rule, thr, no, src,
                            0, rows, dst, 0, index=i, rows=rows)
          src = dst
        jax.block_until_ready(out)
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int = 3) -> float:
  """Median wall-clock seconds of fn() over `repeats` calls (fn must block until its results are ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
