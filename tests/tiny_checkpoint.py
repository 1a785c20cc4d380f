"""A tiny random BERT written as a real Hugging Face checkpoint directory, for end-to-end tests."""

import json
import shutil

import jax
import numpy as np

import encoder_jax
from encoder_jax import hf_import


def write_checkpoint(directory, *, hidden=15, layers=2, heads=3, intermediate=7, max_positions=17):
  """A random BERT with MiniLM's vocabulary and tokenizer, in Hugging Face names, layout and files."""
  H, LAYERS, HEADS = hidden, layers, heads
  cfg = encoder_jax.EncoderConfig(vocab_size=30522, hidden_size=H, num_layers=LAYERS, num_heads=HEADS,
                                  intermediate_size=intermediate, max_position_embeddings=max_positions)
  p = jax.tree.map(np.asarray, encoder_jax.init_params(cfg, jax.random.key(0), seq=8))
  e = p['embeddings']
  t = {f'embeddings.{n}_embeddings.weight': e[f'{n}_embeddings']['embedding']
       for n in ('word', 'position', 'token_type')}
  t['embeddings.LayerNorm.weight'], t['embeddings.LayerNorm.bias'] = e['layer_norm']['scale'], e['layer_norm']['bias']
  for l in range(LAYERS):
    q, pre = p[f'layers_{l}'], f'encoder.layer.{l}.'
    for name in ('query', 'key', 'value'):
      t[pre + f'attention.self.{name}.weight'] = q[name]['kernel'].reshape(H, H).T
      t[pre + f'attention.self.{name}.bias'] = q[name]['bias'].reshape(H)
    t[pre + 'attention.output.dense.weight'] = q['attention_output']['kernel'].reshape(H, H).T
    t[pre + 'attention.output.dense.bias'] = q['attention_output']['bias']
    for ours, theirs in (('attention_layer_norm', 'attention.output.LayerNorm'),
                         ('output_layer_norm', 'output.LayerNorm')):
      t[pre + theirs + '.weight'], t[pre + theirs + '.bias'] = q[ours]['scale'], q[ours]['bias']
    for ours, theirs in (('intermediate', 'intermediate.dense'), ('output', 'output.dense')):
      t[pre + theirs + '.weight'], t[pre + theirs + '.bias'] = q[ours]['kernel'].T, q[ours]['bias']
  from safetensors.numpy import save_file
  directory.mkdir()
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}, str(directory / 'model.safetensors'))
  hf = {'model_type': 'bert', 'vocab_size': 30522, 'hidden_size': H, 'num_hidden_layers': LAYERS,
        'num_attention_heads': HEADS, 'intermediate_size': intermediate, 'max_position_embeddings': max_positions,
        'type_vocab_size': 2, 'hidden_act': 'gelu'}
  (directory / 'config.json').write_text(json.dumps(hf))
  minilm = hf_import.resolve('minilm')
  for name in ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json'):
    if (minilm / name).exists():
      shutil.copy(minilm / name, directory / name)


TOKEN_WORDS = ('good', 'bad', 'movie', 'plot', 'great', 'awful', 'the', 'acting', 'fine', 'dull')


def with_word_tokenizer(source, directory):
  """A copy of checkpoint `source` (any family, vocabulary >= 15) with a WordPiece tokenizer of 15 entries: the
  special tokens and the words of the test tasks, so that a tiny fixture of any family trains on them."""
  shutil.copytree(source, directory)
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *TOKEN_WORDS]
  (directory / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  (directory / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'BertTokenizer', 'do_lower_case': True, 'model_max_length': 512}))
  return directory
