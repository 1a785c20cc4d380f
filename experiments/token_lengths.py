"""Sequence lengths chosen from the data: a quantile of the training split's token counts, rounded up to a
padding bucket and cached per study, so that every sitting uses the same length and the reader sees it."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.common import read_json, write_json


def length_from_counts(token_counts: Sequence[int], *, quantile: float, buckets: Sequence[int],
                       cap: int) -> int:
  """The smallest bucket >= the `quantile` percentile of the examples' token counts, at most cap.

  With quantile 99, 1% of the training examples (the longest) are truncated, and every batch pads to a
  bucket no longer than it needs (the tokenizer already picks the smallest bucket per batch)."""
  if len(token_counts) == 0:
    raise ValueError('No token counts: the training split is empty.')
  if not 0 < quantile <= 100:
    raise ValueError(f'quantile must lie in (0, 100], got {quantile}.')
  q = int(np.ceil(np.percentile(np.asarray(token_counts), quantile)))
  from encoder_jax.tokenization import bucket_length
  return bucket_length(q, cap, buckets)


def lengths_line(cache_path: str) -> str:
  """The chosen lengths for a README: 'minilm/tweets: 64 (99th percentile 62 tokens of 6000 examples)', and
  for a length the study capped, '..., capped at 128: 100% of examples truncated'."""
  cache = read_json(cache_path) if os.path.exists(cache_path) else {}

  def one(key, v):
    percentile = v['percentiles'].get(str(int(v['quantile'])), float('nan'))
    line = (f'{key}: {v["max_seq_length"]} ({v["quantile"]:g}th percentile {percentile:.0f} tokens of '
            f'{v["examples"]} examples')
    if v.get('max_length'):
      line += f', capped at {v["max_length"]}: {100 * v["truncated"]:.0f}% of examples truncated'
    return line + ')'
  return '; '.join(one(k, v) for k, v in sorted(cache.items())) or 'not chosen yet'


def choose_seq_length(cache_path: str, checkpoint: str, data_fields: Mapping[str, Any], *, quantile: float = 99.0,
                      max_length: int = 0) -> int:
  """length_from_counts over the training split's token counts (the checkpoint's tokenizer, special tokens
  included), rounded up to the data config's length_buckets (the lengths batches pad to), capped at the
  model's position table and, when max_length > 0, at max_length (a study's time budget on long texts: the
  cache then records the share of examples truncated); cached in cache_path under checkpoint/source, so that
  every sitting of a study uses the same length (and the reader sees it). A cached entry chosen under another
  max_length is chosen again."""
  cache = read_json(cache_path) if os.path.exists(cache_path) else {}
  key = f'{checkpoint}/{data_fields.get("source")}'
  if key in cache and cache[key].get('max_length', 0) == max_length:
    return int(cache[key]['max_seq_length'])
  from encoder_jax.tokenization import load_tokenizer
  from encoder_jax.config import EncoderConfig
  from encoder_jax.hf_import import resolve
  from pipeline import data
  cfg = data.base_config()
  cfg.update(dict(data_fields))
  splits = data.load_splits(cfg)
  tok = load_tokenizer(checkpoint)
  texts = splits.train.texts
  enc = tok(list(texts[0]), list(texts[1]) if len(texts) == 2 else None, truncation=False)
  counts = [len(ids) for ids in enc['input_ids']]
  cap = EncoderConfig.from_json_file(resolve(checkpoint) / 'config.json').max_length
  cap = min(cap, max_length) if max_length > 0 else cap
  length = length_from_counts(counts, quantile=quantile, buckets=tuple(cfg.length_buckets), cap=cap)
  cache[key] = {'max_seq_length': length, 'quantile': quantile, 'examples': len(counts),
                'percentiles': {str(p): float(np.percentile(counts, p)) for p in (50, 90, 99, 100)}}
  if max_length > 0:
    cache[key] |= {'max_length': max_length, 'truncated': float(np.mean(np.asarray(counts) > length))}
  write_json(cache_path, cache)
  return length
