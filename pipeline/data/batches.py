"""Batching: one epoch of padded, tokenized batches, seeded, resumable mid-epoch and split among processes."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pipeline.data.dataset import TextDataset
from pipeline.data.errors import BadConfigError


def num_batches(n_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
  """Batches per epoch: floor(n / batch_size) when dropping the remainder, else ceil."""
  if batch_size < 1:
    raise BadConfigError(f'batch_size must be >= 1, got {batch_size}.')
  return n_examples // batch_size if drop_remainder else -(-n_examples // batch_size)


def epoch_order(n_examples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  """The example order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
  if not shuffle:
    return np.arange(n_examples)
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n_examples)


def iterate_batches(dataset: TextDataset, encode_fn: Callable, batch_size: int, *, seed: int, epoch: int,
                    shuffle: bool, start_batch: int = 0, process_index: int = 0, process_count: int = 1,
                    agree_length: Callable[[int], int] | None = None,
                    drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of tokenized batches, each with one shape so jit compiles once per sequence bucket.

  batch_size is the global batch; process p of process_count reads and tokenizes only rows
  [p * b, (p + 1) * b) of each global batch, b = batch_size / process_count, so the global batches do not
  depend on the number of processes. The last partial batch is padded to batch_size with copies of its first
  (real) row, marked by example_mask 0, unless drop_remainder. start_batch skips that many batches of this
  epoch without tokenizing them (resuming from a saved data position).

  encode_fn(texts_a, texts_b or None, length=None) -> dict of int32 [rows, seq] arrays (input_ids,
  attention_mask, token_type_ids); seq is its own choice (a bucket) unless `length` is given.
  With several processes every one must pad a batch to the same seq, the one a single process would pick
  for the whole batch: agree_length(seq of my rows) -> the longest over all processes (a collective, e.g.
  pipeline.sharding.max_over_processes); a process whose rows padded shorter tokenizes them again at that
  length. A bucketing tokenizer's bucket of the whole batch is the largest of its parts' buckets, so the
  rows equal those of one process tokenizing the whole batch.

  Yields: the encode_fn arrays [b, seq], labels int32 [b], example_mask float32 [b].
  """
  if batch_size < 1:
    raise BadConfigError(f'batch_size must be >= 1, got {batch_size}.')
  if process_count < 1 or not 0 <= process_index < process_count:
    raise BadConfigError(f'process_index {process_index} is not in [0, process_count={process_count}).')
  if batch_size % process_count:
    raise BadConfigError(f'The global batch_size {batch_size} must divide evenly among {process_count} '
                         'processes.')
  if process_count > 1 and agree_length is None:
    raise BadConfigError(f'{process_count} processes need agree_length, so that they pad to one sequence length.')
  if start_batch < 0:
    raise BadConfigError(f'start_batch must be >= 0, got {start_batch}.')
  n = len(dataset)
  order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  for b in range(start_batch, num_batches(n, batch_size, drop_remainder)):
    idx = order[b * batch_size:(b + 1) * batch_size]
    mask = np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0], idx.dtype)])[rows]
    texts = [[field[i] for i in idx] for field in dataset.texts]
    pair = texts[1] if len(texts) == 2 else None
    batch = {k: np.asarray(v) for k, v in encode_fn(texts[0], pair).items()}
    if process_count > 1:
      seq = batch['input_ids'].shape[1]
      agreed = int(agree_length(seq))
      if agreed != seq:
        batch = {k: np.asarray(v) for k, v in encode_fn(texts[0], pair, length=agreed).items()}
    batch['labels'] = dataset.labels[idx].astype(np.int32)
    batch['example_mask'] = mask[rows]
    yield batch
