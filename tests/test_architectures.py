"""Every architecture (BERT, MPNet, DeBERTa v1 and v2/v3) against Hugging Face torch fixtures (tests/fixtures/make_fixtures.py), and
the library's invariants parametrised over architectures: constant heads replace the whole attention whatever
formed the scores, SWEET's separation is exact (shared parameters copied per segment), and the adaptive engine
answers as the offline sweep. No torch is imported here."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import encoder_jax
from encoder_jax.architectures import deberta, mpnet
from encoder_jax.hf_import import CheckpointError
from sweet_jax import adaptive, curves, exits, objectives

FIXTURES = Path(__file__).parent / 'fixtures'
TOL = 1e-5
# BERT/RoBERTa run the same invariants in test_encoder, test_exits and test_adaptive; here the other families.
FIXTURE_ARCHS = ['mpnet', 'deberta_v2', 'deberta_v1']  # tiny fixture models, one per family
ARCHS = ['mpnet', 'deberta-v2', 'deberta']  # model types
encode = jax.jit(encoder_jax.encode, static_argnums=0, static_argnames=('return_attention',))


def _fixture(kind):
  config, params = encoder_jax.load_pretrained(FIXTURES / f'{kind}_tiny')
  with np.load(FIXTURES / f'{kind}_tiny.npz', allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  types = ref['token_type_ids'] if config.type_vocab_size else None
  return config, params, ref, (ref['input_ids'], ref['attention_mask'], types)


@pytest.mark.parametrize('kind, model_type', [('mpnet', 'mpnet'), ('deberta_v2', 'deberta-v2'),
                                              ('deberta_v2_sep', 'deberta-v2'), ('deberta_v1', 'deberta')])
def test_tiny_parity_every_layer_and_attention(kind, model_type):
  """Every hidden state and attention within 1e-5. DeBERTa is compared at real tokens only: it masks padded
  query rows too (they attend uniformly to everything), a difference no real token can see."""
  config, params, ref, inputs = _fixture(kind)
  assert config.model_type == model_type and config.num_layers == 3
  hiddens, attentions = encode(config, params, *inputs, return_attention=True)
  assert len(hiddens) == len(ref['hidden_states']) == 4
  real = ref['attention_mask'].astype(bool) if kind.startswith('deberta') else np.ones_like(ref['attention_mask'],
                                                                                             bool)
  for layer, (got, want) in enumerate(zip(hiddens, ref['hidden_states'])):
    np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=0, atol=TOL, err_msg=f'{kind} hidden {layer}')
  for layer, (got, want) in enumerate(zip(attentions, ref['attentions'])):
    got, want = np.asarray(got).transpose(0, 2, 1, 3)[real], want.transpose(0, 2, 1, 3)[real]  # query rows
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f'{kind} attention {layer}')


def test_deberta_log_buckets_match_hugging_face():
  with np.load(FIXTURES / 'deberta_v2_tiny.npz', allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  for size, max_position in ((8, 20), (256, 512)):
    want = ref[f'log_buckets_{size}_{max_position}']
    assert len(np.unique(want)) > size  # beyond the exact range: the logarithmic part is exercised
    np.testing.assert_array_equal(deberta.log_buckets(ref['relative_positions'], size, max_position),
                                  want, err_msg=f'{size} buckets, max position {max_position}')


def test_deberta_v1_fused_projection_and_every_loading_problem(tmp_path):
  config, params = encoder_jax.load_pretrained(FIXTURES / 'deberta_v1_tiny')
  tensors = load_file(FIXTURES / 'deberta_v1_tiny' / 'model.safetensors')
  fused = tensors['encoder.layer.2.attention.self.in_proj.weight'].reshape(3, 3, 5, 15)  # [head, q|k|v, d, in]
  for i, name in enumerate(('query', 'key', 'value')):
    np.testing.assert_array_equal(params['layers_2'][name]['kernel'], fused[:, i].transpose(2, 0, 1))
  assert 'bias' not in params['layers_2']['key'] and 'bias' not in params['layers_2']['pos_key']  # v1 has none
  assert params[encoder_jax.SHARED]['embedding'].shape == (12, 15)  # 2k rows, k = 6
  del tensors['encoder.rel_embeddings.weight']
  tensors['encoder.layer.0.attention.self.pos_q_proj.weight'] = np.zeros((15, 14), np.float32)
  tensors['encoder.conv.conv.weight'] = np.zeros((15, 15, 3), np.float32)  # a v2 convolution in a v1 file
  _assert_problems(tmp_path, 'deberta_v1', tensors, (
      'missing tensor for relative/embedding', "'encoder.layer.0.attention.self.pos_q_proj.weight'",
      "unexpected tensor 'encoder.conv.conv.weight'"))


def test_mpnet_buckets_match_hugging_face():
  """Every relative position of a 600-token input lands in Hugging Face's bucket (log boundaries included)."""
  with np.load(FIXTURES / 'mpnet_tiny.npz', allow_pickle=False) as f:
    positions, want = f['relative_positions'], f['buckets']
  assert len(np.unique(want)) == 31  # every bucket but 16 (distance 0 counts as "before")
  np.testing.assert_array_equal(mpnet.buckets_of(positions), want)


def test_mpnet_parameter_tree_and_every_loading_problem(tmp_path):
  config, params = encoder_jax.load_pretrained(FIXTURES / 'mpnet_tiny')
  assert config.type_vocab_size == 0 and config.position_offset == 2
  assert 'token_type_embeddings' not in params['embeddings']
  assert params[encoder_jax.SHARED]['embedding'].shape == (32, 3)  # one table for all layers
  init = jax.eval_shape(lambda k: encoder_jax.init_params(config, k), jax.random.key(0))
  leaves = lambda t: {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(t)}
  assert leaves(init) == {k: v for k, v in leaves(params).items() if 'pooler' not in k}
  tensors = load_file(FIXTURES / 'mpnet_tiny' / 'model.safetensors')
  del tensors['encoder.relative_attention_bias.weight']
  tensors['encoder.layer.1.attention.attn.o.weight'] = np.zeros((15, 14), np.float32)
  tensors['embeddings.token_type_embeddings.weight'] = np.zeros((2, 15), np.float32)
  _assert_problems(tmp_path, 'mpnet', tensors, (
      'missing tensor for relative/embedding',
      "shape mismatch for 'encoder.layer.1.attention.attn.o.weight': checkpoint (15, 14)",
      "unexpected tensor 'embeddings.token_type_embeddings.weight': no such parameter in a mpnet encoder"))


def _assert_problems(tmp_path, kind, tensors, parts):
  """Loading the fixture's config with these tensors fails with exactly these problems, all in one error."""
  directory = tmp_path / 'broken'
  directory.mkdir()
  (directory / 'config.json').write_text((FIXTURES / f'{kind}_tiny' / 'config.json').read_text())
  save_file(tensors, directory / 'model.safetensors')
  with pytest.raises(CheckpointError) as info:
    encoder_jax.load_pretrained(directory)
  message = str(info.value)
  assert message.startswith(f'{len(parts)} problem(s)')
  for part in parts:
    assert part in message, part


# ------------------------------------------------------------------------- constant heads, every architecture

CONSTANT_HEADS = [(0, 1), (1, 1), (2, 1), (1, 0)]  # head 1 constant in every layer


@pytest.mark.parametrize('kind', FIXTURE_ARCHS)
def test_constant_heads_replace_the_whole_attention(kind):
  """Constants equal to the attention of one unpadded example give back its hidden states, whatever formed
  the scores (MPNet adds its relative bias); other matrices give other states."""
  config, params, ref, inputs = _fixture(kind)
  one = tuple(None if x is None else x[:1] for x in inputs)
  assert ref['attention_mask'][0].all()
  hiddens, attentions = encode(config, params, *one, return_attention=True)
  constants = jnp.stack([a[0] for a in attentions])  # [layers, heads, 13, 13]
  all_constant = config.with_heads('constant', 'all')
  for got in (encode(config.with_heads('constant', CONSTANT_HEADS), params, *one, constants=constants),
              encode(all_constant, params, *one, constants=constants, return_attention=True)[0]):  # both paths
    for layer, (a, b) in enumerate(zip(got, hiddens)):
      np.testing.assert_allclose(a, b, rtol=0, atol=TOL, err_msg=f'{kind} layer {layer}')
  other = encode(all_constant, params, *one, constants=constants[:, ::-1], return_attention=True)[0]
  assert np.abs(np.asarray(other[-1]) - np.asarray(hiddens[-1])).max() > 1e-2


@pytest.mark.parametrize('kind', FIXTURE_ARCHS)
def test_constant_heads_compute_no_query_key_or_score_term(kind):
  """Exactly zero gradient on a constant head's query and key, and on its column of the shared relative
  bias when it is constant in every layer; the mixed heads' gradients stay non-zero."""
  config, params, ref, inputs = _fixture(kind)
  constants = np.random.default_rng(0).uniform(size=(3, 3, 13, 13)).astype(np.float32)
  weights = np.random.default_rng(1).standard_normal((4, 13, 15)).astype(np.float32)
  const_config = config.with_heads('constant', CONSTANT_HEADS).with_heads('mixed', [(0, 2)])
  gates = jnp.zeros((3, 3))
  loss = lambda p: (encoder_jax.encode(const_config, p, *inputs, constants=constants, gates=gates)[-1]
                    * weights).sum()
  grads = jax.jit(jax.grad(loss))(params)
  projections = [n for n in ('query', 'key', 'pos_query', 'pos_key') if n in grads['layers_0']]
  for layer in range(3):
    for head in range(3):
      for name in projections:  # DeBERTa's position projections too
        g = np.asarray(grads[f'layers_{layer}'][name]['kernel'][:, head])
        if (layer, head) in CONSTANT_HEADS:
          assert not g.any(), (layer, head, name)
        else:
          assert np.abs(g).max() > 1e-4, (layer, head, name)
  if kind == 'mpnet':
    table = np.asarray(grads[encoder_jax.SHARED]['embedding'])  # [buckets, heads]
    assert not table[:, 1].any() and np.abs(table[:, [0, 2]]).max() > 1e-4


# ----------------------------------------------------------------- SWEET separation, every architecture

EXIT_LAYERS = (1, 3, 5)
B, S, C = 3, 7, 3


def _tiny_config(kind):
  common = dict(vocab_size=37, hidden_size=10, num_layers=5, num_heads=2, intermediate_size=13,
                max_position_embeddings=23, hidden_dropout=0.0, attention_dropout=0.0)
  if kind == 'mpnet':
    return encoder_jax.EncoderConfig(model_type='mpnet', type_vocab_size=0, pad_token_id=1,
                                     relative_attention_num_buckets=32, **common)
  if kind == 'deberta-v2':  # v3-like: shared key, log buckets, normed table, convolution
    return encoder_jax.EncoderConfig(model_type=kind, type_vocab_size=0, relative_attention=True, position_buckets=4,
                                     max_relative_positions=10, pos_att_type=('p2c', 'c2p'), share_att_key=True,
                                     norm_rel_ebd=True, conv_kernel_size=3, position_biased_input=False, **common)
  if kind == 'deberta':
    return encoder_jax.EncoderConfig(model_type=kind, type_vocab_size=0, relative_attention=True,
                                     max_relative_positions=4, pos_att_type=('c2p', 'p2c'), **common)
  return encoder_jax.EncoderConfig(model_type=kind, **common)


def _batch(config, seed=0, n=B, seq=S):
  rng = np.random.default_rng(seed)
  lens = np.concatenate([[seq], rng.integers(2, seq + 1, n - 1)])
  mask = (np.arange(seq)[None] < lens[:, None]).astype(np.int32)
  pad = config.pad_token_id
  ids = np.where(mask > 0, rng.integers(pad + 1, config.vocab_size, (n, seq)), pad).astype(np.int32)
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': np.zeros_like(ids),
          'labels': rng.integers(0, C, n).astype(np.int32), 'example_mask': np.ones((n,), np.float32)}


def _owner(path):
  """('segment' | 'head', i) of a parameter path in the exit-model layout."""
  keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
  if keys[0] in ('heads', 'segment_shared'):
    return ('head' if keys[0] == 'heads' else 'segment', keys[1])
  if keys[1] == 'embeddings':
    return ('segment', 0)
  if keys[1] == encoder_jax.SHARED:
    return ('shared', None)  # Early-Exit: the model's own sharing
  layer = int(keys[1].split('_')[1])
  return ('segment', next(i for i, stop in enumerate(EXIT_LAYERS) if layer < stop))


def _exit_jacobian(kind, method):
  config = _tiny_config(kind)
  ecfg = exits.ExitConfig(EXIT_LAYERS, C, classifier_dropout=0.0)
  init, _, _ = objectives.make_fns(method, config, ecfg, encoder_jax.init_params(config, jax.random.key(0)))
  params = init(jax.random.key(1))
  batch = _batch(config)
  forward = lambda p: exits.forward(config, ecfg, p, batch, stop_gradient=(method == 'sweet'))
  losses = lambda p: objectives.exit_losses(forward(p), batch['labels'], batch['example_mask'])
  return params, jax.device_get(jax.jit(jax.jacrev(losses))(params))


def _is_key_bias(path):  # softmax is invariant to the key bias: its gradient is zero up to rounding
  return tuple(getattr(k, 'key', None) for k in path[-2:]) == ('key', 'bias')


@pytest.mark.parametrize('kind', ARCHS)
def test_sweet_separation_is_exact(kind):
  params, jac = _exit_jacobian(kind, 'sweet')
  if kind != 'bert':  # one copy of the shared relative parameters per segment, none left in the encoder
    assert len(params['segment_shared']) == len(EXIT_LAYERS) and encoder_jax.SHARED not in params['encoder']
    # Per-segment gradient clipping groups each copy with its segment.
    groups = objectives.param_groups('sweet', exits.ExitConfig(EXIT_LAYERS, C))(params)
    assert jax.tree.structure(groups) == jax.tree.structure(params)
    assert [set(jax.tree.leaves(g)) for g in groups['segment_shared']] == [{0}, {1}, {2}]
  for i in range(len(EXIT_LAYERS)):
    for path, g in jax.tree_util.tree_leaves_with_path(jax.tree.map(lambda x: x[i], jac)):
      where = _owner(path)
      if where in (('segment', i), ('head', i)):
        assert _is_key_bias(path) or np.any(g != 0), f'{kind}: exit {i} has no gradient on {path}'
      else:
        assert np.all(g == 0), f'{kind}: exit {i} leaks gradient into {jax.tree_util.keystr(path)}'


def test_early_exit_keeps_the_models_sharing():
  params, jac = _exit_jacobian('mpnet', 'early_exit')
  assert 'segment_shared' not in params
  table = jac['encoder'][encoder_jax.SHARED]['embedding']  # [exits, buckets, heads]
  assert all(np.any(table[i] != 0) for i in range(len(EXIT_LAYERS)))  # every exit reaches the one table


# -------------------------------------------------------- adaptive engine = offline sweep, every architecture

@pytest.mark.parametrize('kind', ['mpnet', 'deberta-v2'])  # DeBERTa v1 shares v2's disentangled code path
def test_adaptive_engine_matches_offline_sweep(kind):
  config = _tiny_config(kind)
  ecfg = exits.ExitConfig(EXIT_LAYERS, C, pooling='mean', classifier_dropout=0.0)
  params = exits.init_exit_model(jax.random.key(1), config, encoder_jax.init_params(config, jax.random.key(0)),
                                 ecfg, segment_copies=True)
  for i, head in enumerate(params['heads']):  # wide confidences, so every exit gets examples
    head['classifier']['kernel'] = head['classifier']['kernel'] * 1000.0
  # Segment copies that differ (as after training), so a segment run with another's copy would show.
  params['segment_shared'] = tuple(
      jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.key(10 + i), x.shape), copy)
      for i, copy in enumerate(params['segment_shared']))
  data = {k: v for k, v in _batch(config, seed=2, n=19).items() if k in adaptive._PAYLOAD_KEYS}
  logits = np.asarray(exits.forward(config, ecfg, params, data, stop_gradient=False))
  conf = np.unique(np.asarray(jax.nn.softmax(logits, -1).max(-1)))
  # Thresholds in the middle of wide gaps between observed confidences, so that float rounding between a
  # full and a compacted batch cannot flip a decision.
  wide = [float(a + b) / 2 for a, b in zip(conf[:-1], conf[1:]) if b - a > 1e-3]
  thresholds = [wide[len(wide) // 2], wide[(4 * len(wide)) // 5], 0.0, 1.5]
  engine = adaptive.AdaptiveEngine(config, ecfg, params, method='sweet', batch_size=8, buckets=(4,))
  batches = [{k: v[i:i + 8] for k, v in data.items()} for i in range(0, 19, 8)]
  seen = set()
  for t in thresholds:
    want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, jnp.ones(3), t))
    seen |= set(want_exit.tolist())
    for mode in adaptive.MODES:
      got = engine.run(batches, t, mode=mode)
      np.testing.assert_array_equal(got.exit_index, want_exit, err_msg=f'{kind} {t} {mode}')
      np.testing.assert_array_equal(got.predictions, want_pred, err_msg=f'{kind} {t} {mode}')
  assert seen == {0, 1, 2}
  np.testing.assert_array_equal(engine.run_full(batches), logits[-1].argmax(-1))
  # The full-model baseline runs every segment with its own copy: its logits, not only its argmax, agree.
  full = adaptive._full(engine.spec, engine.params, None, {k: jnp.asarray(v) for k, v in data.items()})
  np.testing.assert_allclose(np.asarray(full), logits[-1], rtol=1e-4, atol=1e-3)


PARITY = {'mpnet': (1, 3, 70, 256), 'deberta_v1': (1, 3, 5, 9, 41), 'deberta_v1_long': (1, 3, 20, 64),
          'deberta_v3': (1, 3, 200, 300, 512), 'deberta_v1_norel': (3, 13), 'deberta_v1_noterms': (3, 13)}


@pytest.mark.parametrize('name, length', [(n, l) for n, lengths in PARITY.items() for l in lengths])
def test_parity_at_every_length(name, length):
  """transformers' last hidden state (projected on 4 directions) at lengths 1, 3, below and above DeBERTa's span
  and twice MPNet's buckets, and the whole position table (v3-like: 256 buckets, 512 positions); rows: a
  full-length pair, right and left padding. Real tokens only (DeBERTa's padded rows differ, unseen)."""
  config, params = encoder_jax.load_pretrained(FIXTURES / f'parity_{name}')
  with np.load(FIXTURES / f'parity_{name}.npz', allow_pickle=False) as f:
    ids, mask, types = (f[f'{k}_{length}'].astype(np.int32) for k in ('ids', 'mask', 'types'))
    want, projection = f[f'proj_{length}'], f['projection']
  hidden = np.asarray(encode(config, params, ids, mask, types if config.type_vocab_size else None)[-1])
  got = hidden.astype(np.float64) @ projection
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=0, atol=1e-4, err_msg=f'{name} at length {length}')
