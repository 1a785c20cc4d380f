"""Tokenization with the checkpoint's Hugging Face fast tokenizer: single sentences and pairs, padded to
a small set of bucket lengths (so jit compiles a bounded number of shapes), and PAPA's fixed layout.

`make_encode_fn` gives the batch encoder a model uses (pipeline.data.iterate_batches calls it): it checks
token types against the model's type vocabulary on the host, because the jitted embedding lookup cannot
raise and fills out-of-range rows with NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Sequence

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)


def _auto_tokenizer():
  """transformers.AutoTokenizer, imported without transformers' "PyTorch was not found" advisory: this library
  uses only its tokenizers and configs, which need no torch, so the first line a user reads is not an alarm.
  Only the import is quieted (the advisory is printed while `transformers` initialises); later advisories and
  every warning still reach the console."""
  key = 'TRANSFORMERS_NO_ADVISORY_WARNINGS'
  saved = os.environ.get(key)
  os.environ[key] = '1'
  try:
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  finally:
    if saved is None:
      del os.environ[key]
    else:
      os.environ[key] = saved
  return AutoTokenizer


def load_tokenizer(path_or_id: str | os.PathLike):
  """The fast tokenizer stored beside a checkpoint (same names as load_pretrained accepts)."""
  AutoTokenizer = _auto_tokenizer()  # pylint: disable=invalid-name
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


@dataclasses.dataclass(frozen=True)
class PairTemplate:
  """The special tokens a tokenizer adds around one sentence and around a pair, with their token types.

  Read from the tokenizer's own post-processor (`pair_template`), so each family keeps its format:
  BERT [CLS] A [SEP] B [SEP] with types 0/1; RoBERTa and MPNet <s> A </s></s> B </s> with one type.
  Special runs are tuples of (token id, token type); a_type and b_type are the types of the sentences'
  own tokens in a pair.
  """
  single_prefix: tuple[tuple[int, int], ...]
  single_suffix: tuple[tuple[int, int], ...]
  prefix: tuple[tuple[int, int], ...]
  middle: tuple[tuple[int, int], ...]
  suffix: tuple[tuple[int, int], ...]
  a_type: int
  b_type: int


def _special_runs(encoding, num_sentences: int):
  """One encoded row -> (runs of template tokens before, between and after the sentences, sentence types).

  Uses the row's sequence ids: None marks a token the template added, 0 and 1 the two sentences' tokens.
  """
  runs = [[] for _ in range(num_sentences + 1)]
  seen, types = [], []
  for tok, typ, sid in zip(encoding['input_ids'][0], encoding['token_type_ids'][0], encoding.sequence_ids(0)):
    if sid is None:
      runs[len(seen)].append((int(tok), int(typ)))
    elif not seen or seen[-1] != sid:
      if sid != len(seen):
        raise ValueError(f'The tokenizer\'s template interleaves its sentences ({encoding.sequence_ids(0)}); '
                         'the PAPA layout needs sentence A, then sentence B.')
      seen.append(sid)
      types.append(int(typ))
  if len(seen) != num_sentences:
    raise ValueError(f'Could not read the tokenizer\'s template: sequence ids {encoding.sequence_ids(0)}.')
  return [tuple(r) for r in runs], types


def pair_template(tokenizer) -> PairTemplate:
  """The tokenizer's own template for one sentence and for a pair, read by encoding two one-word texts."""
  if not getattr(tokenizer, 'is_fast', False):
    raise TypeError(f'{type(tokenizer).__name__} is not a fast tokenizer; the PAPA layout reads the template '
                    'from a fast tokenizer\'s sequence ids.')
  (pre, suf), _ = _special_runs(tokenizer(['a'], return_token_type_ids=True), 1)
  (prefix, middle, suffix), (a_type, b_type) = _special_runs(tokenizer(['a'], ['b'], return_token_type_ids=True), 2)
  return PairTemplate(pre, suf, prefix, middle, suffix, a_type, b_type)


def _put(ids, types, mask, row, start, pieces):
  """Writes (token id, token type) pieces into row `row` from position `start` on; marks them real."""
  for j, (tok, typ) in enumerate(pieces):
    ids[row, start + j], types[row, start + j], mask[row, start + j] = tok, typ, 1


def papa_layout(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, *,
                length: int = 64) -> dict[str, np.ndarray]:
  """PAPA's fixed layout, so that a position means the same thing in every example.

  The tokenizer's own template (`pair_template`) gives the special tokens: its opening run ([CLS] or <s>)
  and sentence A fill positions [0, L/2); for pairs the middle run ([SEP], or </s></s>) and sentence B
  start at L/2; the closing run ends at L-1, so the final [SEP] is always at L-1; gaps are padding (mask 0).
  Token types are the template's (BERT: sentence B and the final [SEP] 1; RoBERTa: all 0) and move with
  the tokens. Returns int32 arrays input_ids, attention_mask, token_type_ids: [batch, L].
  """
  if length % 2 or length < 8:
    raise ValueError(f'PAPA layout length must be even and >= 8, got {length}.')
  half = length // 2
  t = pair_template(tokenizer)
  pairs = texts_b is not None
  prefix, suffix = (t.prefix, t.suffix) if pairs else (t.single_prefix, t.single_suffix)
  room_a = half - len(prefix)
  room_b = length - len(suffix) - half - len(t.middle)
  if room_a < 1 or (pairs and room_b < 1):
    raise ValueError(f'PAPA layout length {length} leaves no room for a sentence between the template\'s '
                     f'special tokens {t}.')
  n = len(texts_a)
  ids = np.full((n, length), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((n, length), np.int32)
  types = np.zeros((n, length), np.int32)
  # Each text keeps at most L/2 word pieces, so truncating at L changes nothing; it spares tokenizing long
  # documents whole (and transformers' warning that a text exceeds the model's positions).
  tok = lambda texts: tokenizer(list(texts), add_special_tokens=False, truncation=True,
                                max_length=length)['input_ids']
  a_tokens = tok(texts_a)
  b_tokens = tok(texts_b) if pairs else None
  for i in range(n):
    a = [(x, t.a_type) for x in a_tokens[i][:room_a]]  # sentence A may use the whole first half
    _put(ids, types, mask, i, 0, prefix + tuple(a))
    if pairs:
      b = [(x, t.b_type) for x in b_tokens[i][:room_b]]
      _put(ids, types, mask, i, half, t.middle + tuple(b))
    _put(ids, types, mask, i, length - len(suffix), suffix)
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': types}


def check_token_types(token_type_ids, type_vocab_size: int) -> None:
  """Raises ValueError when a token type id lies outside [0, type_vocab_size).

  The check belongs on the host: inside jit the embedding lookup of an out-of-range id returns NaN rows
  (a RoBERTa model, type_vocab_size 1, given sentence B as type 1 yields NaN hidden states, no error).
  """
  types = np.asarray(token_type_ids)
  bad = np.argwhere((types < 0) | (types >= type_vocab_size))
  if bad.size:
    row, col = (int(x) for x in bad[0])
    raise ValueError(f'token_type_ids[{row}, {col}] = {int(types[row, col])} (and {len(bad) - 1} more) is outside '
                     f'the model\'s type_vocab_size={type_vocab_size}: the tokenizer does not match the model.')


def _encode_checked(encode: Callable, type_vocab_size: int, texts_a, texts_b=None, **kwargs):
  batch = encode(texts_a, texts_b, **kwargs)
  if type_vocab_size == 0:  # the model has no token-type embeddings and reads none
    batch['token_type_ids'] = np.zeros_like(batch['token_type_ids'])
  else:
    check_token_types(batch['token_type_ids'], type_vocab_size)
  return batch


def make_encode_fn(tokenizer, config, *, max_length: int | None = None, layout_length: int | None = None,
                   buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> Callable[..., dict[str, np.ndarray]]:
  """The batch encoder of a model: encode_fn(texts_a, texts_b=None, length=None) -> int32 [batch, seq] arrays.

  config: the model's EncoderConfig (its type_vocab_size and max_length are read).
  layout_length: PAPA's fixed layout of this length (for constant heads); otherwise `tokenize` with
    buckets, at most max_length (default, and capped at, the model's position table).
  Every batch's token types are checked against config.type_vocab_size (`check_token_types`); a model
  without token-type embeddings (type_vocab_size 0) is given zeros.
  """
  if layout_length is not None:
    encode = functools.partial(papa_layout, tokenizer, length=layout_length)
  else:
    max_length = config.max_length if max_length is None else min(max_length, config.max_length)
    encode = functools.partial(tokenize, tokenizer, max_length=max_length, buckets=buckets)
  return functools.partial(_encode_checked, encode, int(config.type_vocab_size))
