"""Tokenization with the checkpoint's Hugging Face fast tokenizer: single sentences and pairs, padded to
a small set of bucket lengths (so jit compiles a bounded number of shapes), and PAPA's fixed layout."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)


def load_tokenizer(path_or_id: str | os.PathLike):
  """The fast tokenizer stored beside a checkpoint (same names as load_pretrained accepts)."""
  from transformers import AutoTokenizer
  from encoder_jax.hf_import import resolve
  directory = resolve(path_or_id)
  tokenizer = AutoTokenizer.from_pretrained(str(directory))
  config = directory / 'config.json'
  if config.exists() and json.loads(config.read_text()).get('model_type') == 'deberta':
    bert_pair_layout(tokenizer)
  return tokenizer


def bert_pair_layout(tokenizer) -> None:
  """Makes a DeBERTa v1 tokenizer write BERT's layout: [CLS] A [SEP] B [SEP], B and its [SEP] type 1.

  transformers 5 builds DeBERTa v1's byte-level BPE tokenizer with RoBERTa's pair template
  ([CLS] A [SEP] [SEP] B [SEP], one token type); DeBERTa v1 was pretrained, and the papers' code (transformers
  4) fine-tuned it, with BERT's layout.
  """
  from tokenizers import processors
  cls, sep = tokenizer.cls_token, tokenizer.sep_token
  tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=f'{cls}:0 $A:0 {sep}:0', pair=f'{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1',
      special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)])


def bucket_length(longest: int, max_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The smallest bucket that holds `longest` tokens, capped at max_length."""
  for b in sorted(buckets):
    if b >= longest:
      return min(b, max_length)
  return max_length


def tokenize(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, *, max_length: int = 128,
             buckets: Sequence[int] | None = DEFAULT_BUCKETS, length: int | None = None) -> dict[str, np.ndarray]:
  """Tokenizes sentences (or pairs), truncating to max_length and padding to a bucket length.

  length: pad to exactly this many tokens instead (at least the longest example, at most max_length); the
  caller picks it when several processes each tokenize part of one batch and must agree on its shape.
  Returns int32 arrays input_ids, attention_mask, token_type_ids: [batch, seq], where seq is `length`, or
  the smallest bucket >= the longest example (or max_length when buckets is None).
  """
  for name, texts in (('texts_a', texts_a), ('texts_b', texts_b)):
    if texts is not None and not all(isinstance(t, str) for t in texts):
      bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
      raise TypeError(f'{name}[{bad}] is {type(texts[bad]).__name__}, not str.')
  if texts_b is not None and len(texts_b) != len(texts_a):
    raise ValueError(f'{len(texts_a)} first sentences but {len(texts_b)} second sentences.')
  enc = tokenizer(list(texts_a), None if texts_b is None else list(texts_b), truncation=True,
                  max_length=max_length, padding='longest', return_token_type_ids=True)
  longest = max((len(x) for x in enc['input_ids']), default=1)
  seq = max_length if buckets is None else bucket_length(longest, max_length, buckets)
  if length is not None:
    if not longest <= length <= max_length:
      raise ValueError(f'length={length} must lie in [{longest} (the longest example), max_length={max_length}].')
    seq = length
  out = {}
  for key, pad in (('input_ids', tokenizer.pad_token_id), ('attention_mask', 0), ('token_type_ids', 0)):
    arr = np.full((len(texts_a), seq), pad, np.int32)
    for i, row in enumerate(enc[key]):
      arr[i, :len(row)] = row
    out[key] = arr
  return out


def papa_layout(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, *,
                length: int = 64) -> dict[str, np.ndarray]:
  """PAPA's fixed layout, so that a position means the same thing in every example.

  [CLS] and sentence A fill positions [0, L/2); for pairs the first [SEP] and sentence B start at L/2;
  the final [SEP] is always at L-1; gaps are padding (mask 0). Token type ids move with the tokens
  (sentence B's segment id stays with sentence B). Returns int32 arrays [batch, L].
  """
  if length % 2 or length < 8:
    raise ValueError(f'PAPA layout length must be even and >= 8, got {length}.')
  half = length // 2
  cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
  n = len(texts_a)
  ids = np.full((n, length), pad, np.int32)
  mask = np.zeros((n, length), np.int32)
  types = np.zeros((n, length), np.int32)
  tok = lambda texts: tokenizer(list(texts), add_special_tokens=False)['input_ids']
  a_tokens = tok(texts_a)
  b_tokens = tok(texts_b) if texts_b is not None else None
  for i in range(n):
    a = [cls] + a_tokens[i][:half - 1]  # sentence A may use the whole first half
    ids[i, :len(a)], mask[i, :len(a)] = a, 1
    if b_tokens is None:
      ids[i, -1], mask[i, -1] = sep, 1
      continue
    b = [sep] + b_tokens[i][:half - 2] + [sep]  # [SEP] B ... and the final [SEP] at L-1
    body = b[:-1]
    ids[i, half:half + len(body)], mask[i, half:half + len(body)] = body, 1
    types[i, half + 1:half + len(body)] = 1  # the first [SEP] closes segment A, as in BERT
    ids[i, -1], mask[i, -1], types[i, -1] = sep, 1, 1
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': types}
