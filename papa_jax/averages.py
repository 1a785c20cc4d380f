"""Masked running averages of attention over a dataset: PAPA's constant matrices.

For every layer l, head h and cell (i, j) of the fixed layout of length L:

  sums[l, h, i, j] = sum_n A_n[l, h, i, j] m_n[i] m_n[j]
  counts[i, j]     = sum_n m_n[i] m_n[j]
  averages         = sums / counts where counts > 0, else 0 (a cell never observed is 0)

A_n is example n's attention from the pretrained (not fine-tuned) encoder, run deterministically, and
m_n its attention mask (times the batch's example_mask, so rows that only pad the last batch count for
nothing). Rows are not renormalised here; the encoder's constant kernel crops and renormalises them per
example. Sums and counts are kept, not just their ratio, so an estimate can be extended with more data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax

FORMAT_VERSION = 1


@dataclasses.dataclass
class AttentionSums:
  """Running masked sums of attention.

  Attributes:
    sums: float64 [layers, heads, L, L], sum over examples of A[l,h,i,j] m[i] m[j].
    counts: float64 [L, L], sum over examples of m[i] m[j].
    num_examples: examples seen so far.
    model: name of the checkpoint the attention came from (metadata).
    length: L, the fixed layout's length.
    encoder: model_identity of the encoder the attention came from ({} when not recorded: older files).
  """
  sums: np.ndarray
  counts: np.ndarray
  num_examples: int = 0
  model: str = ''
  length: int = 0
  encoder: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def zeros(cls, num_layers: int, num_heads: int, length: int, model: str = '',
            encoder: dict | None = None) -> 'AttentionSums':
    return cls(np.zeros((num_layers, num_heads, length, length), np.float64),
               np.zeros((length, length), np.float64), 0, model, length, dict(encoder or {}))

  @property
  def averages(self) -> np.ndarray:
    """float32 [layers, heads, L, L]: sums / counts where a cell was observed, else 0."""
    seen = self.counts > 0
    avg = np.where(seen, self.sums / np.where(seen, self.counts, 1.0), 0.0)
    return avg.astype(np.float32)

  @property
  def unoccupied_slots(self) -> np.ndarray:
    """int [U]: the layout slots no example of the estimate occupied (counts[i, i] == 0).

    Their rows and columns of the averages are 0, so a constant head gives a token there no context and
    lets no other token attend to it.
    """
    return np.flatnonzero(np.diagonal(self.counts) == 0)

  def add(self, batch_sums: np.ndarray, batch_counts: np.ndarray, batch_examples: int) -> None:
    """Adds one batch's contribution (float32 from the device) into the float64 totals."""
    self.sums += np.asarray(batch_sums, np.float64)
    self.counts += np.asarray(batch_counts, np.float64)
    self.num_examples += int(batch_examples)


def batch_sums(config: encoder_jax.EncoderConfig, params, input_ids, attention_mask, token_type_ids,
               example_mask=None):
  """One batch's masked attention sums (pure; jit it).

  Args:
    input_ids, attention_mask, token_type_ids: int32 [batch, L].
    example_mask: float32 [batch], 0 for rows that only pad the batch (or None: all real).
  Returns:
    (sums float32 [layers, heads, L, L], counts float32 [L, L]).
  """
  _, attentions = encoder_jax.encode(config, params, input_ids, attention_mask, token_type_ids,
                                     return_attention=True)
  m = attention_mask.astype(jnp.float32)
  if example_mask is not None:
    m = m * example_mask.astype(jnp.float32)[:, None]
  outer = m[:, :, None] * m[:, None, :]  # [batch, L, L]
  probs = jnp.stack(attentions, axis=1).astype(jnp.float32)  # [batch, layers, heads, L, L]
  sums = jnp.einsum('blhij,bij->lhij', probs, outer)
  return sums, outer.sum(0)


@functools.lru_cache(maxsize=8)
def _jitted_batch_sums(config: encoder_jax.EncoderConfig):
  return jax.jit(functools.partial(batch_sums, config))


def accumulate(config: encoder_jax.EncoderConfig, params, batches: Iterable[Mapping[str, Any]],
               estimate: AttentionSums | None = None, *, model: str = '', length: int | None = None,
               progress=None) -> AttentionSums:
  """Streams batches through the frozen encoder and adds their attention into `estimate`.

  Args:
    config: the encoder's config; its head kinds are reset to softmax (the pretrained attention).
    params: pretrained encoder parameters (not fine-tuned).
    batches: dicts with input_ids, attention_mask, token_type_ids [batch, L] and optionally
      example_mask [batch]; every batch must have the same L.
    estimate: sums to extend, or None to start from zeros.
    model, length: metadata for a new estimate (length defaults to the first batch's L).
    progress: optional callable(num_examples_so_far), e.g. for logging.
  Returns:
    The (same, if given) AttentionSums, updated in place.
  """
  config = config.replace(head_kinds=None)
  params = jax.device_put(params)  # once, not a host-to-device copy of the weights on every batch
  step = _jitted_batch_sums(config)
  for batch in batches:
    ids = np.asarray(batch['input_ids'])
    if estimate is None:
      estimate = AttentionSums.zeros(config.num_layers, config.num_heads, length or ids.shape[1], model,
                                     model_identity(config))
    if ids.shape[1] != estimate.length:
      raise ValueError(f'Batch length {ids.shape[1]} differs from the estimate\'s length {estimate.length}; '
                       'lay every input out at one fixed length (encoder_jax.papa_layout).')
    example_mask = batch.get('example_mask')
    if example_mask is None:
      example_mask = np.ones(ids.shape[0], np.float32)
    sums, counts = step(params, ids, batch['attention_mask'], batch['token_type_ids'], example_mask)
    estimate.add(sums, counts, int(np.asarray(example_mask).sum()))
    if progress is not None:
      progress(estimate.num_examples)
  if estimate is None:
    raise ValueError('No batches to estimate attention from.')
  return estimate


def slot_coverage(estimate: AttentionSums, masks) -> dict[str, Any]:
  """The layout slots no example of the estimate occupied, and how many test-time tokens land in them.

  A constant head gives a token in such a slot no context and lets no other token attend to it, so these
  counts belong beside every accuracy measured with constant heads.
  Args:
    masks: bool or 0/1 [examples, L], the real tokens of each (real) test example.
  Returns:
    {'unoccupied_slots': [slot, ...], 'num_unoccupied_slots', 'eval_tokens_in_unoccupied_slots',
     'eval_examples_with_tokens_in_unoccupied_slots'}.
  """
  empty = estimate.unoccupied_slots
  hits = np.asarray(masks)[:, empty] > 0
  return {'unoccupied_slots': empty.tolist(), 'num_unoccupied_slots': int(empty.size),
          'eval_tokens_in_unoccupied_slots': int(hits.sum()),
          'eval_examples_with_tokens_in_unoccupied_slots': int(hits.any(1).sum())}


def save(path: str | os.PathLike, estimate: AttentionSums) -> None:
  """Writes sums, counts, averages and metadata to an .npz (plain arrays: loads without pickle)."""
  path = os.fspath(path)
  tmp = path + '.tmp.npz'
  np.savez(tmp, sums=estimate.sums, counts=estimate.counts, averages=estimate.averages,
           num_examples=np.int64(estimate.num_examples), model=np.str_(estimate.model),
           length=np.int64(estimate.length), encoder=np.str_(json.dumps(estimate.encoder, sort_keys=True)),
           format_version=np.int64(FORMAT_VERSION))
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written estimate that resume would trust


def load_constants(path: str | os.PathLike) -> np.ndarray:
  """Just the averages, float32 [layers, heads, L, L], from a file written by `save`."""
  return load(path).averages


def load(path: str | os.PathLike) -> AttentionSums:
  """Reads an estimate written by `save` (np.load with allow_pickle=False)."""
  with np.load(os.fspath(path), allow_pickle=False) as f:
    version = int(f['format_version'])
    if version != FORMAT_VERSION:
      raise ValueError(f'{path}: attention-average format {version}, this code reads {FORMAT_VERSION}.')
    encoder = json.loads(str(f['encoder'])) if 'encoder' in f.files else {}
    return AttentionSums(sums=f['sums'].astype(np.float64), counts=f['counts'].astype(np.float64),
                         num_examples=int(f['num_examples']), model=str(f['model']), length=int(f['length']),
                         encoder=encoder)


def model_identity(config: encoder_jax.EncoderConfig) -> dict[str, Any]:
  """What attention averages depend on in an encoder's config: its architecture and sizes (not its kernels,
  dtype or dropout)."""
  fields = ('model_type', 'vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
            'max_position_embeddings', 'type_vocab_size')
  return {f: getattr(config, f) for f in fields}


def _model_name(name: str) -> str:
  """A checkpoint name as comparable text: a local directory by its absolute path."""
  return os.path.abspath(os.path.expanduser(name)) if name and os.path.isdir(os.path.expanduser(name)) else name


def check_fits(estimate: AttentionSums, config: encoder_jax.EncoderConfig, checkpoint: str = '', *,
               where: str = 'the averages') -> None:
  """Raises ValueError unless `estimate` was made for this encoder: sums [config.num_layers,
  config.num_heads, L, L] (a head index must never fall outside them: indexing would clamp it to the last
  head), and, where the file recorded them, the same architecture and sizes and the same checkpoint name."""
  shape = tuple(estimate.sums.shape)
  want = (config.num_layers, config.num_heads)
  problems = []
  if shape[:2] != want:
    problems.append(f'shape {list(shape)}, but the encoder has {want[0]} layers x {want[1]} heads')
  mine = model_identity(config)
  problems += [f'{k} {estimate.encoder[k]!r} (the encoder: {mine[k]!r})' for k in mine
               if k in estimate.encoder and estimate.encoder[k] != mine[k]]
  if estimate.model and checkpoint and _model_name(estimate.model) != _model_name(str(checkpoint)):
    problems.append(f'estimated for model {estimate.model!r}, used with {checkpoint!r}')
  if problems:
    raise ValueError(f'{where} were not estimated for this encoder: {"; ".join(problems)}. Estimate them with '
                     'this model (python train.py --config configs/papa_demo.py --config.model.checkpoint=...).')
