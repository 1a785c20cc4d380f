"""Pair layouts of each family's tokenizer through encoder_jax.tokenization, on small tokenizers built here in
the families' formats (no real RoBERTa or DeBERTa tokenizer is available offline):
  BERT (packaged MiniLM; tests/test_tokenize.py)   [CLS] A [SEP] B [SEP]       types 0 .. 0 1 .. 1
  RoBERTa / MPNet (byte-level BPE)                 <s> A </s></s> B </s>       one token type
  DeBERTa v1 (byte-level BPE, BERT's layout)       [CLS] A [SEP] B [SEP]       types 0 .. 0 1 .. 1
  DeBERTa v2/v3 (SentencePiece unigram)            [CLS] A [SEP] B [SEP]       types 0 .. 0 1 .. 1
(MPNet's real tokenizer is checked in test_mpnet_base.py.)"""

import json

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import encoder_jax

CORPUS = ['a man plays the guitar', 'someone makes music', 'the cat sat on the mat'] * 5
SPECIALS = ['<s>', '<pad>', '</s>', '<unk>', '<mask>', '[CLS]', '[SEP]', '[PAD]', '[UNK]', '[MASK]']


@pytest.fixture(scope='module')
def bpe():
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  vocab = tok.get_vocab()
  merges = [tuple(m.split()) if isinstance(m, str) else tuple(m)
            for m in json.loads(tok.to_str())['model']['merges']]
  return vocab, merges


def _layout(tokenizer):
  batch = encoder_jax.tokenize(tokenizer, ['a man plays'], ['someone makes music'], buckets=None, max_length=20)
  n = int(batch['attention_mask'][0].sum())
  return tokenizer.convert_ids_to_tokens(batch['input_ids'][0, :n].tolist()), batch['token_type_ids'][0, :n]


def _check(tokens, types, cls, sep, double_sep, typed):
  seps = [i for i, t in enumerate(tokens) if t == sep]
  assert tokens[0] == cls and tokens[-1] == sep
  assert len(seps) == (3 if double_sep else 2), tokens
  if double_sep:
    assert seps[1] == seps[0] + 1
  b_start = seps[-2] + 1
  want = np.r_[np.zeros(b_start), np.ones(len(tokens) - b_start) if typed else np.zeros(len(tokens) - b_start)]
  np.testing.assert_array_equal(types, want)


def test_roberta_and_mpnet_pairs(bpe):
  vocab, merges = bpe
  tokens, types = _layout(transformers.RobertaTokenizer(vocab=vocab, merges=merges))
  _check(tokens, types, '<s>', '</s>', double_sep=True, typed=False)


def test_deberta_v1_pairs_take_berts_layout(bpe, tmp_path):
  vocab, merges = bpe
  transformers.DebertaTokenizer(vocab=vocab, merges=merges).save_pretrained(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'deberta'}))
  raw = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  _check(*_layout(raw), '[CLS]', '[SEP]', double_sep=True, typed=False)  # transformers 5's own template
  _check(*_layout(encoder_jax.load_tokenizer(tmp_path)), '[CLS]', '[SEP]', double_sep=False, typed=True)


def test_deberta_v2_sentencepiece_pairs():
  unigram = Tokenizer(models.Unigram())
  unigram.pre_tokenizer = pre_tokenizers.Metaspace()
  unigram.train_from_iterator(CORPUS, trainers.UnigramTrainer(
      vocab_size=60, special_tokens=['[PAD]', '[CLS]', '[SEP]', '[UNK]', '[MASK]'], unk_token='[UNK]'))
  vocab = [(unigram.id_to_token(i), -1.0) for i in range(unigram.get_vocab_size())]
  tokens, types = _layout(transformers.DebertaV2Tokenizer(vocab=vocab))
  assert any(t.startswith('\u2581') for t in tokens)  # SentencePiece's word-start marker
  _check(tokens, types, '[CLS]', '[SEP]', double_sep=False, typed=True)
