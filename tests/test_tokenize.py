"""Tokenization with the packaged MiniLM tokenizer: buckets, pairs, truncation and PAPA's fixed layout."""

from pathlib import Path

import numpy as np
import pytest

import encoder_jax
from encoder_jax import tokenization as tok_lib

CLS, SEP, PAD = 101, 102, 0
LONG = ' '.join(['word'] * 50)  # 50 tokens of 'word'


@pytest.fixture(scope='module')
def tokenizer():
  tok = encoder_jax.load_tokenizer('minilm')
  assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == (CLS, SEP, PAD)
  return tok


def test_bucket_is_the_smallest_that_holds_the_longest(tokenizer):
  assert tok_lib.bucket_length(33, 512, (64, 32, 128)) == 64  # order of buckets does not matter
  assert tok_lib.bucket_length(200, 128) == 128  # capped at max_length
  assert tok_lib.bucket_length(600, 512, (32, 64)) == 512
  short = encoder_jax.tokenize(tokenizer, ['a cat', 'the dog sat'])
  assert short['input_ids'].shape == (2, 32)
  medium = encoder_jax.tokenize(tokenizer, ['a cat', ' '.join(['word'] * 31)])  # 33 tokens with [CLS], [SEP]
  assert medium['input_ids'].shape == (2, 64)
  exact = encoder_jax.tokenize(tokenizer, [' '.join(['word'] * 30)])  # exactly 32 tokens
  assert exact['input_ids'].shape == (1, 32)
  fixed = encoder_jax.tokenize(tokenizer, ['a cat'], max_length=20, buckets=None)
  assert fixed['input_ids'].shape == (1, 20)
  for batch in (short, medium, exact, fixed):
    assert all(v.dtype == np.int32 for v in batch.values())


def test_single_sentences_match_the_tokenizer_and_pad(tokenizer):
  texts = ['The cat sat on the mat.', 'Hello world!']
  batch = encoder_jax.tokenize(tokenizer, texts)
  for i, text in enumerate(texts):
    want = tokenizer(text)['input_ids']
    n = len(want)
    np.testing.assert_array_equal(batch['input_ids'][i, :n], want)
    assert (batch['input_ids'][i, n:] == PAD).all()
    assert batch['attention_mask'][i, :n].all() and not batch['attention_mask'][i, n:].any()
    assert not batch['token_type_ids'][i].any()


def test_pairs_give_sentence_b_token_type_1(tokenizer):
  batch = encoder_jax.tokenize(tokenizer, ['a man plays', 'hi'], ['someone makes music', 'there you are'])
  for i in range(2):
    ids, types, mask = batch['input_ids'][i], batch['token_type_ids'][i], batch['attention_mask'][i]
    seps = np.flatnonzero(ids == SEP)
    assert ids[0] == CLS and len(seps) == 2
    first, last = seps
    assert not types[:first + 1].any()  # [CLS] A [SEP]
    assert types[first + 1:last + 1].all()  # B [SEP]
    assert not types[last + 1:].any() and not mask[last + 1:].any()
  b = tokenizer('someone makes music', add_special_tokens=False)['input_ids']
  np.testing.assert_array_equal(batch['input_ids'][0, 5:5 + len(b)], b)  # [CLS] a man plays [SEP] = 5


def test_truncation_to_max_length(tokenizer):
  batch = encoder_jax.tokenize(tokenizer, [LONG, 'short'], max_length=24)
  assert batch['input_ids'].shape == (2, 24)
  assert batch['attention_mask'][0].all() and batch['input_ids'][0, -1] == SEP
  pairs = encoder_jax.tokenize(tokenizer, [LONG], [LONG], max_length=24)
  ids = pairs['input_ids'][0]
  assert pairs['attention_mask'][0].all() and (ids == SEP).sum() == 2 and ids[-1] == SEP
  assert pairs['token_type_ids'][0].sum() > 0  # both sentences keep a share


def test_an_agreed_length_pads_like_the_bucket_of_the_whole_batch(tokenizer):
  """Two hosts tokenizing halves of a batch at the agreed length give the rows of the whole batch."""
  texts = ['a cat', ' '.join(['word'] * 40), 'the dog sat', 'hi']
  whole = encoder_jax.tokenize(tokenizer, texts)
  assert whole['input_ids'].shape == (4, 64)
  halves = [encoder_jax.tokenize(tokenizer, texts[:2], length=64), encoder_jax.tokenize(tokenizer, texts[2:], length=64)]
  assert encoder_jax.tokenize(tokenizer, texts[2:])['input_ids'].shape == (2, 32)  # its own bucket is shorter
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
  with pytest.raises(ValueError, match=r'length=16 must lie in \[42'):
    encoder_jax.tokenize(tokenizer, texts, length=16)
  with pytest.raises(ValueError, match='max_length=128'):
    encoder_jax.tokenize(tokenizer, texts, length=256)


def test_input_errors(tokenizer):
  with pytest.raises(ValueError, match='2 first sentences but 1 second'):
    encoder_jax.tokenize(tokenizer, ['a', 'b'], ['c'])
  with pytest.raises(TypeError, match=r'texts_a\[1\] is float'):
    encoder_jax.tokenize(tokenizer, ['a', float('nan')])
  with pytest.raises(ValueError, match='even'):
    encoder_jax.papa_layout(tokenizer, ['a'], length=13)


def test_matches_the_fixture_inputs(tokenizer):
  """The MiniLM reference inputs (tokenized by transformers) are what tokenize() produces."""
  with np.load(Path(__file__).parent / 'fixtures' / 'minilm.npz', allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  texts_b = list(ref['texts_b'])
  assert texts_b[0] == '' and texts_b[1]  # a single sentence and a pair
  seq = ref['input_ids'].shape[1]
  single = encoder_jax.tokenize(tokenizer, list(ref['texts_a'][:1]), max_length=seq, buckets=None)
  pair = encoder_jax.tokenize(tokenizer, list(ref['texts_a'][1:]), texts_b[1:], max_length=seq, buckets=None)
  for key in ('input_ids', 'attention_mask', 'token_type_ids'):
    np.testing.assert_array_equal(np.concatenate([single[key], pair[key]]), ref[key], err_msg=key)


@pytest.mark.parametrize('length', [16, 32])
def test_papa_layout_pairs(tokenizer, length):
  half = length // 2
  batch = encoder_jax.papa_layout(tokenizer, ['a man plays', LONG], ['someone makes music', LONG], length=length)
  ids, mask, types = batch['input_ids'], batch['attention_mask'], batch['token_type_ids']
  assert ids.shape == (2, length)
  assert (ids[:, 0] == CLS).all() and (ids[:, half] == SEP).all() and (ids[:, -1] == SEP).all()
  assert (mask[:, [0, half, length - 1]] == 1).all()
  # Short pair: A right after [CLS], padding up to L/2; B right after the middle [SEP], padding up to L-1.
  a = tokenizer('a man plays', add_special_tokens=False)['input_ids']
  b = tokenizer('someone makes music', add_special_tokens=False)['input_ids']
  np.testing.assert_array_equal(ids[0, 1:1 + len(a)], a)
  np.testing.assert_array_equal(ids[0, half + 1:half + 1 + len(b)], b)
  assert not mask[0, 1 + len(a):half].any() and not mask[0, half + 1 + len(b):length - 1].any()
  assert (ids[0][mask[0] == 0] == PAD).all()
  # B's token types move with B (and the final [SEP]); A, [CLS] and the middle [SEP] are segment 0.
  want_types = np.zeros(length, np.int32)
  want_types[half + 1:half + 1 + len(b)] = 1
  want_types[-1] = 1
  np.testing.assert_array_equal(types[0], want_types)
  # Long pair: A fills the first half, B everything between the two [SEP]s.
  assert mask[1].all() and (types[1, half + 1:] == 1).all() and not types[1, :half + 1].any()
  assert (ids[1] == SEP).sum() == 2


def test_papa_layout_single_sentences(tokenizer):
  batch = encoder_jax.papa_layout(tokenizer, ['a man plays', LONG], length=16)
  ids, mask, types = batch['input_ids'], batch['attention_mask'], batch['token_type_ids']
  assert (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
  assert not types.any()
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1] + [0] * 11 + [1])
  np.testing.assert_array_equal(mask[1], [1] * 8 + [0] * 7 + [1])  # A is cut at L/2
  assert (ids[1, 1:8] == ids[1, 1]).all() and ids[1, 8] == PAD


# ------------------------------------------------------------------- every family's own pair template

WORDS = ['<s>', '<pad>', '</s>', '<unk>', '[CLS]', '[SEP]', 'a', 'man', 'plays', 'someone', 'makes', 'music', 'word']


def tiny_tokenizer(family):
  """A word-level fast tokenizer with the post-processor of a family, like the checkpoints ship:
  'bert' [CLS] A [SEP] B [SEP] (types 0/1), 'roberta' <s> A </s></s> B </s> (one type, as MPNet)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  vocab = {w: i for i, w in enumerate(WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  if family == 'bert':
    tok.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1', special_tokens=[('[CLS]', 4), ('[SEP]', 5)])
    specials = dict(cls_token='[CLS]', sep_token='[SEP]')
  else:
    tok.post_processor = processors.RobertaProcessing(('</s>', 2), ('<s>', 0))
    specials = dict(cls_token='<s>', sep_token='</s>', bos_token='<s>', eos_token='</s>')
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', unk_token='<unk>', **specials)


def _ids(*words):
  return [WORDS.index(w) for w in words]


def test_papa_layout_uses_each_familys_own_separators_and_types():
  """RoBERTa: <s> A </s></s> B </s>, every type 0 (its model has one type); BERT: types 0/1 that move with B."""
  L, half = 16, 8
  a, b = ['a man plays'], ['someone makes music']
  got = encoder_jax.papa_layout(tiny_tokenizer('roberta'), a, b, length=L)
  want = np.full(L, WORDS.index('<pad>'))
  want[:4] = _ids('<s>', 'a', 'man', 'plays')
  want[half:half + 5] = _ids('</s>', '</s>', 'someone', 'makes', 'music')
  want[-1] = WORDS.index('</s>')
  np.testing.assert_array_equal(got['input_ids'][0], want)
  np.testing.assert_array_equal(got['attention_mask'][0], want != WORDS.index('<pad>'))
  assert not got['token_type_ids'].any()
  single = encoder_jax.papa_layout(tiny_tokenizer('roberta'), [' '.join(['word'] * 20)], length=L)
  want_single = _ids('<s>') + _ids('word') * 7 + _ids('<pad>') * 7 + _ids('</s>')
  np.testing.assert_array_equal(single['input_ids'][0], want_single)

  got = encoder_jax.papa_layout(tiny_tokenizer('bert'), a, b, length=L)
  want = np.full(L, WORDS.index('<pad>'))
  want[:4] = _ids('[CLS]', 'a', 'man', 'plays')
  want[half:half + 4] = _ids('[SEP]', 'someone', 'makes', 'music')
  want[-1] = WORDS.index('[SEP]')
  np.testing.assert_array_equal(got['input_ids'][0], want)
  want_types = np.zeros(L, np.int32)
  want_types[[half + 1, half + 2, half + 3, L - 1]] = 1
  np.testing.assert_array_equal(got['token_type_ids'][0], want_types)
  # A long pair fills every slot: B gets L/2 - len(middle) - len(suffix) tokens.
  full = encoder_jax.papa_layout(tiny_tokenizer('roberta'), [' '.join(['word'] * 20)] * 1, [' '.join(['word'] * 20)],
                                 length=L)
  assert full['attention_mask'].all() and (full['input_ids'][0, half + 2:L - 1] == WORDS.index('word')).all()


def test_token_types_outside_the_type_vocabulary_are_an_error_on_the_host():
  """A type id past type_vocab_size would make the jitted lookup return NaN rows; the encode function a model
  uses refuses it, naming type_vocab_size, for bucketed batches and the PAPA layout alike."""
  one_type = encoder_jax.EncoderConfig(model_type='roberta', type_vocab_size=1, pad_token_id=1,
                                       max_position_embeddings=66)
  bert_tok, roberta_tok = tiny_tokenizer('bert'), tiny_tokenizer('roberta')
  for layout in (None, 16):
    fn = encoder_jax.make_encode_fn(bert_tok, one_type, layout_length=layout)
    with pytest.raises(ValueError, match='type_vocab_size=1'):
      fn(['a man'], ['plays'])
    assert not fn(['a man']).get('token_type_ids').any()  # single sentences are all type 0: fine
    batch = encoder_jax.make_encode_fn(roberta_tok, one_type, layout_length=layout)(['a man'], ['plays'])
    assert not batch['token_type_ids'].any()
    two = encoder_jax.make_encode_fn(bert_tok, one_type.replace(type_vocab_size=2), layout_length=layout)
    assert two(['a man'], ['plays'])['token_type_ids'].max() == 1
  assert encoder_jax.make_encode_fn(bert_tok, one_type.replace(type_vocab_size=0))(['a'], ['man'])[
      'token_type_ids'].max() == 0  # no type embeddings at all: the model reads none
  capped = encoder_jax.make_encode_fn(bert_tok, one_type, max_length=500)  # capped at the position table (64)
  assert capped([' '.join(['word'] * 100)])['input_ids'].shape == (1, 64)
