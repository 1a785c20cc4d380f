"""The encoder against torch reference outputs (fixtures written by tests/fixtures/make_fixtures.py), on
8 simulated devices, and the constant / mixed attention kernels. No torch is imported here."""

import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import encoder_jax
from encoder_jax import attention

FIXTURES = Path(__file__).parent / 'fixtures'
TOL = 1e-5
RNG = np.random.default_rng(0)  # test data from numpy: eager jax.random compiles once per shape
# Jitted once per config (configs are hashable): op-by-op execution of Flax apply is slow to dispatch.
encode = jax.jit(encoder_jax.encode, static_argnums=0, static_argnames=('return_attention',))


def _load(kind):
  """(config, params, reference arrays) of a fixture model: 'bert' or 'roberta' (tiny), or 'minilm'."""
  if kind == 'minilm':
    config, params = encoder_jax.load_pretrained('minilm')
  else:
    config, params = encoder_jax.load_pretrained(FIXTURES / f'{kind}_tiny')
  name = 'minilm.npz' if kind == 'minilm' else f'{kind}_tiny.npz'
  with np.load(FIXTURES / name, allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  return config, params, ref


def _inputs(ref, rows=slice(None)):
  return ref['input_ids'][rows], ref['attention_mask'][rows], ref['token_type_ids'][rows]


@pytest.fixture(scope='module')
def bert():
  return _load('bert')


def _shallow(config, params, layers=1):
  """The first `layers` layers of a model: tests of our own invariants need no depth, and compiling
  fewer layers keeps the suite fast."""
  keep = ['embeddings'] + [f'layers_{i}' for i in range(layers)]
  return config.replace(num_layers=layers), {k: params[k] for k in keep}


@pytest.mark.parametrize('kind', ['bert', 'roberta'])
def test_tiny_parity_every_layer_and_attention(kind):
  config, params, ref = _load(kind)
  assert config.model_type == kind and config.num_layers == 3 and config.hidden_size == 15
  hiddens, attentions = encode(config, params, *_inputs(ref), return_attention=True)
  assert len(hiddens) == config.num_layers + 1 and len(attentions) == config.num_layers
  for layer, (got, want) in enumerate(zip(hiddens, ref['hidden_states'])):
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f'{kind} hidden state {layer}')
  for layer, (got, want) in enumerate(zip(attentions, ref['attentions'])):
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f'{kind} attention {layer}')


def test_embed_and_run_layers_compose_to_encode(bert):
  """Segments run on their own (the building block of exits): params may hold only the segment's layers."""
  config, params, ref = bert
  ids, mask, types = _inputs(ref)
  hidden = encoder_jax.embed(config, params, ids, mask, types)
  np.testing.assert_allclose(hidden, ref['hidden_states'][0], rtol=0, atol=TOL)
  first = encoder_jax.run_layers(config, {'layers_0': params['layers_0']}, hidden, mask, 0, 1)
  rest = encoder_jax.run_layers(config, {k: params[k] for k in ('layers_1', 'layers_2')}, first[-1], mask, 1, 3)
  assert len(first) == 1 and len(rest) == 2
  for got, want in zip(first + rest, ref['hidden_states'][1:]):
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
  with pytest.raises(ValueError, match='outside'):
    encoder_jax.run_layers(config, params, hidden, mask, 2, 4)


def test_minilm_real_weight_parity():
  config, params, ref = _load('minilm')
  assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
  hiddens = encode(config, params, *_inputs(ref))
  real = ref['attention_mask'].astype(bool)
  assert not real.all(), 'the fixture should hold padding'
  for layer, (got, want) in enumerate(zip(hiddens, ref['hidden_states'])):
    got = np.asarray(got)
    np.testing.assert_allclose(got[real], want[real], rtol=0, atol=TOL, err_msg=f'MiniLM layer {layer}')
    # Padded positions are numerically ill-conditioned in this model (torch's own eager and SDPA kernels
    # differ there by ~1e-4), so they get a looser bound; no output reads them.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f'MiniLM layer {layer}, padding')


@pytest.mark.parametrize('axis_type', ['explicit', 'auto'])
def test_sharded_batch_equals_single_device(bert, axis_type):
  """Data parallel on 8 devices: explicit axes are jax.make_mesh's default, auto what pipeline/ uses."""
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  config, params, ref = bert
  ids, mask, types = (np.concatenate([x, x[::-1]]) for x in _inputs(ref))  # 8 rows, one per device
  fn = jax.jit(lambda p, i, m, t: encode(config, p, i, m, t))
  single = fn(params, ids, mask, types)
  kind = {'explicit': jax.sharding.AxisType.Explicit, 'auto': jax.sharding.AxisType.Auto}[axis_type]
  mesh = jax.make_mesh((8,), ('data',), axis_types=(kind,))
  rows = NamedSharding(mesh, P('data'))
  sharded_inputs = [jax.device_put(x, rows) for x in (ids, mask, types)]
  replicated = jax.device_put(params, NamedSharding(mesh, P()))
  sharded = fn(replicated, *sharded_inputs)
  assert sharded[-1].sharding.is_equivalent_to(NamedSharding(mesh, P('data')), 3)
  assert {s.data.shape for s in sharded[-1].addressable_shards} == {(1, 13, 15)}
  for got, want in zip(sharded, single):  # same math; per-device batch 1 changes matmul blocking only
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
  np.testing.assert_allclose(np.asarray(sharded[-1])[:4], ref['hidden_states'][-1], rtol=0, atol=TOL)


def test_sequence_longer_than_position_table():
  config, params, _ = _load('roberta')
  assert config.max_length == 39  # 41 rows, offset past the padding id 1
  ids = np.full((1, 40), 5, np.int32)
  with pytest.raises(ValueError, match='position table'):
    encode(config, params, ids, np.ones_like(ids))
  out = encode(config, params, ids[:, :39], np.ones_like(ids[:, :39]))
  assert out[-1].shape == (1, 39, 15)


def test_fully_padded_rows_stay_finite(bert):
  """Rows that only pad the last batch have an all-zero mask; they must not poison a batch with NaN."""
  config, params = _shallow(*bert[:2])
  ids, mask, types = _inputs(bert[2])
  mask = mask.copy()
  mask[1] = 0
  consts = jnp.full((1, 3, 13, 13), 1 / 13)
  for cfg in (config, config.with_heads('constant', 'all'), config.with_heads('mixed', 'all')):
    out = encode(cfg, params, ids, mask, types, constants=consts, gates=jnp.zeros((1, 3)))
    assert np.isfinite(np.asarray(out[-1])).all(), cfg.head_kinds


def test_dropout_only_with_rng(bert):
  config, params = _shallow(*bert[:2])
  inputs = _inputs(bert[2])
  plain = encode(config, params, *inputs)[-1]
  key = jax.random.key(3)
  a = encode(config, params, *inputs, rng=key)[-1]
  b = encode(config, params, *inputs, rng=key)[-1]
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(plain)).max() > 1e-2


def test_bfloat16_compute_stays_close(bert):
  config, params, ref = bert
  out = encode(config.replace(dtype='bfloat16'), params, *_inputs(ref))[-1]
  assert out.dtype == jnp.bfloat16
  real = ref['attention_mask'].astype(bool)
  err = np.abs(np.asarray(out, np.float32) - ref['hidden_states'][-1])[real].max()
  assert 1e-4 < err < 0.2, err  # bfloat16 rounding shows, but the result is the same model


# ---------------------------------------------------------------------------------- constant and mixed heads

CONSTANT_HEADS = [(0, 1), (1, 0), (1, 2), (2, 2)]


def _grads(config, params, ref, constants=None, gates=None):
  ids, mask, types = _inputs(ref)
  weights = RNG.standard_normal((4, 13, 15), np.float32)

  def loss(p):
    return (encoder_jax.encode(config, p, ids, mask, types, constants=constants, gates=gates)[-1] * weights).sum()

  return jax.jit(jax.grad(loss))(params)


def test_constant_heads_get_exactly_zero_query_and_key_gradient(bert):
  config, params, ref = bert
  constants = RNG.uniform(size=(3, 3, 13, 13)).astype(np.float32)
  grads = _grads(config.with_heads('constant', CONSTANT_HEADS), params, ref, constants=constants)
  for layer in range(3):
    g = grads[f'layers_{layer}']
    for head in range(3):
      for name in ('query', 'key'):
        kernel, bias = np.asarray(g[name]['kernel'][:, head]), np.asarray(g[name]['bias'][head])
        if (layer, head) in CONSTANT_HEADS:
          assert not kernel.any() and not bias.any(), (layer, head, name)
        else:  # (the key bias shifts a whole row of scores, so its true gradient is 0 in any head)
          assert np.abs(kernel).max() > 1e-3, (layer, head, name)
          if name == 'query':
            assert np.abs(bias).max() > 1e-3, (layer, head, name)
      assert np.abs(np.asarray(g['value']['kernel'][:, head])).max() > 1e-6  # values still learn


def test_softmax_heads_have_nonzero_query_and_key_gradient(bert):
  config, params, ref = bert
  grads = _grads(config, params, ref)
  for layer in range(3):
    for name in ('query', 'key'):
      per_head = np.abs(np.asarray(grads[f'layers_{layer}'][name]['kernel'])).max(axis=(0, 2))
      assert (per_head > 1e-6).all(), (layer, name, per_head)


@pytest.mark.parametrize('heads', ['all', CONSTANT_HEADS])
def test_constant_attention_reproduces_the_attention_it_was_given(bert, heads):
  """Constants set to the attention that one unpadded example produces give back its hidden states."""
  config, params, ref = bert
  row = 0
  assert ref['attention_mask'][row].all()
  inputs = _inputs(ref, slice(row, row + 1))
  hiddens, attentions = encode(config, params, *inputs, return_attention=True)
  constants = jnp.stack([a[0] for a in attentions])  # [layers, heads, 13, 13]
  chex.assert_shape(constants, (3, 3, 13, 13))
  const_config = config.with_heads('constant', heads)
  got, got_attn = encode(const_config, params, *inputs, constants=constants, return_attention=True)
  for layer, (a, b) in enumerate(zip(got, hiddens)):
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL, err_msg=f'layer {layer}')
  for a, b in zip(got_attn, attentions):  # returned in head order, whatever the grouping by kind
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
  fast = encode(const_config, params, *inputs, constants=constants)  # without probabilities: fast path
  for layer, (a, b) in enumerate(zip(fast, hiddens)):
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL, err_msg=f'fast path, layer {layer}')
  # And the constants matter: other matrices give other hidden states.
  other = encode(const_config, params, *inputs, constants=constants[:, ::-1])
  assert np.abs(np.asarray(other[-1]) - np.asarray(hiddens[-1])).max() > 1e-2


def test_mixed_head_with_saturated_gate_is_softmax_or_constant(bert):
  config, params = _shallow(*bert[:2], layers=2)
  inputs = _inputs(bert[2])
  heads = [(0, 1), (1, 0), (1, 2)]
  constants = RNG.uniform(size=(2, 3, 13, 13)).astype(np.float32)
  mixed = config.with_heads('mixed', heads)
  softmax = encode(config, params, *inputs)
  constant = encode(config.with_heads('constant', heads), params, *inputs, constants=constants)
  # sigmoid(+-40) is 1 or 0 to float32 precision; gates of non-mixed heads are ignored.
  for sign, want in ((1.0, softmax), (-1.0, constant)):
    got = encode(mixed, params, *inputs, constants=constants, gates=jnp.full((2, 3), 40.0 * sign))
    for layer, (a, b) in enumerate(zip(got, want)):
      np.testing.assert_allclose(a, b, rtol=0, atol=TOL, err_msg=f'gate {sign:+} layer {layer}')
  half = encode(mixed, params, *inputs, constants=constants, gates=jnp.zeros((2, 3)))
  assert np.abs(np.asarray(half[-1]) - np.asarray(softmax[-1])).max() > 1e-3


def test_non_softmax_heads_need_their_inputs(bert):
  config, params, ref = bert
  with pytest.raises(ValueError, match='constants'):
    encode(config.with_heads('constant', [(0, 0)]), params, *_inputs(ref))
  with pytest.raises(ValueError, match='gates'):
    encode(config.with_heads('mixed', [(0, 0)]), params, *_inputs(ref),
                       constants=jnp.ones((3, 3, 13, 13)))


def test_softmax_kernel_paths_agree():
  """The fused path (no probabilities) and the probability path compute the same attention."""
  q, k, v = RNG.standard_normal((3, 2, 7, 3, 5), np.float32)
  mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  fast, none = jax.jit(attention.softmax_attention)(q, k, v, mask)
  slow, probs = jax.jit(attention.softmax_attention, static_argnames='return_probs')(q, k, v, mask, return_probs=True)
  assert none is None
  np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-6)
  assert not np.asarray(probs[1, :, :, 4:]).any()  # padded keys get no weight


def test_forward_and_reverse_mode_agree(bert):
  """encode supports jax.jvp (custom rules are JVPs, not VJPs) and its transpose is consistent:
  <J v, u> == <v, J^T u> for random tangents v of the parameters and cotangents u of the output."""
  config, params, ref = bert
  config, params = _shallow(config, params)
  ids, mask, types = _inputs(ref)
  f = lambda p: encoder_jax.encode(config, p, ids, mask, types)[-1]
  v = jax.tree.map(lambda x: RNG.standard_normal(x.shape, np.float32), params)
  u = RNG.standard_normal((4, 13, 15), np.float32)
  _, jv = jax.jit(lambda p, t: jax.jvp(f, (p,), (t,)))(params, v)
  (jtu,) = jax.jit(lambda p, c: jax.vjp(f, p)[1](c))(params, u)
  lhs = float(np.vdot(np.asarray(jv, np.float64), u))
  rhs = float(sum(np.vdot(a, np.asarray(b, np.float64)) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(jtu))))
  assert abs(lhs) > 1.0
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
  assert np.abs(np.asarray(jtu['layers_0']['output']['bias'])).max() > 1e-3  # the bias rule feeds back


def test_recommended_compiler_options_keep_parity(bert):
  """The options bench/ and callers pass to jax.jit change speed, not results."""
  options = encoder_jax.compiler_options()
  if jax.default_backend() == 'cpu':
    assert options == {'xla_cpu_experimental_ynn_fusion_type': ''}
  assert encoder_jax.compiler_options('gpu') == {}
  config, params, ref = bert
  fn = jax.jit(lambda p, i, m, t: encoder_jax.encode(config, p, i, m, t), compiler_options=options)
  for got, want in zip(fn(params, *_inputs(ref)), ref['hidden_states']):
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
  config, params = _shallow(config, params)
  loss = lambda p: encoder_jax.encode(config, p, *_inputs(ref))[-1].sum()
  grads = jax.jit(jax.grad(loss), compiler_options=options)(params)
  plain = jax.jit(jax.grad(loss))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, plain)


def test_constant_and_mixed_fast_paths_match_their_probabilities():
  """Without dropout or returned probabilities, constant and mixed heads never form [b, heads, L, L]
  probabilities; the result must equal applying those probabilities, zero-mass rows included."""
  q, k, v = RNG.standard_normal((3, 3, 9, 2, 5), np.float32)
  mask = np.array([[1] * 9, [1] * 4 + [0] * 5, [0] * 9])  # full, padded, and an all-padding row
  constant = RNG.uniform(size=(2, 9, 9)).astype(np.float32)
  constant[1, 2] = 0.0  # a query row of head 1 that was never observed
  gate = np.array([0.7, -1.3], np.float32)
  for kernel in (attention.constant_attention, attention.mixed_attention):
    fast, none = jax.jit(kernel)(q, k, v, mask, constant, gate)
    slow, probs = jax.jit(kernel, static_argnames='return_probs')(q, k, v, mask, constant, gate, return_probs=True)
    assert none is None and probs.shape == (3, 2, 9, 9)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6, err_msg=kernel.__name__)
  fast, _ = attention.constant_attention(None, None, v, mask, constant)
  assert not np.asarray(fast[2]).any() and not np.asarray(fast[1, 4:]).any()  # padded queries give 0
  assert not np.asarray(fast[0, 2, 1]).any() and np.asarray(fast[0, 2, 0]).any()  # only the unobserved row


@pytest.mark.parametrize('seq', [12, 14])
def test_constant_heads_refuse_an_input_that_is_not_the_layout_length(bert, seq):
  """Constants of a length-13 layout put the final [SEP] at slot 12: a shorter input (which used to be
  cropped silently) or a longer one misaligns every slot, so both stop at trace time, naming L."""
  config, params = _shallow(*bert[:2])
  ids = np.full((2, seq), 5, np.int32)
  consts = jnp.full((1, 3, 13, 13), 1 / 13)
  for cfg in (config.with_heads('constant', [(0, 1)]), config.with_heads('mixed', 'all')):
    with pytest.raises(ValueError, match=f'length L=13; the input has length {seq}'):
      encode(cfg, params, ids, np.ones_like(ids), np.zeros_like(ids), constants=consts, gates=jnp.zeros((1, 3)))
  for kernel in (attention.constant_attention, attention.mixed_attention):
    with pytest.raises(ValueError, match='L=13'):
      qkv = np.zeros((1, seq, 3, 5), np.float32)
      kernel(qkv, qkv, qkv, np.ones((1, seq)), consts[0], np.zeros(3, np.float32), return_probs=True)


def test_a_padded_examples_own_attention_as_its_constant_reproduces_it(bert):
  """An independent check of masking and renormalisation: a padded example's softmax attention, with every
  row scaled by its own positive factor and garbage written into the padded rows and columns, used as its
  constant matrices gives back its hidden states at the real positions (constant and mixed heads alike)."""
  config, params, ref = bert
  row = 1
  inputs = _inputs(ref, slice(row, row + 1))
  real = inputs[1][0].astype(bool)
  assert 0 < real.sum() < real.size
  hiddens, attentions = encode(config, params, *inputs, return_attention=True)
  constants = np.stack([np.asarray(a[0]) for a in attentions])  # [layers, heads, 13, 13]
  constants *= RNG.uniform(0.2, 5.0, size=constants.shape[:3] + (1,))  # renormalisation must undo this
  pad = ~real
  constants[:, :, pad, :] = RNG.uniform(size=constants[:, :, pad, :].shape)  # and masking drop this
  constants[:, :, :, pad] = RNG.uniform(size=constants[:, :, :, pad].shape)
  for cfg in (config.with_heads('constant', 'all'), config.with_heads('mixed', 'all')):
    got = encode(cfg, params, *inputs, constants=constants, gates=jnp.zeros((3, 3)))
    for layer, (a, b) in enumerate(zip(got, hiddens)):
      np.testing.assert_allclose(np.asarray(a)[0, real], np.asarray(b)[0, real], rtol=0, atol=TOL,
                                 err_msg=f'{cfg.kinds(0)[0]} layer {layer}')


def _numpy_layer(p, x, mask, kinds, constants, gates, eps):
  """One post-layer-norm BERT layer in float64 numpy, each head by its kind: (hidden [b, s, H], probs)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  proj = lambda name: np.einsum('bsh,hnd->bsnd', x, p[name]['kernel']) + p[name]['bias']
  q, k, v = proj('query'), proj('key'), proj('value')
  m = mask.astype(np.float64)
  scores = np.einsum('bqnd,bknd->bnqk', q, k) / np.sqrt(q.shape[-1]) + np.where(m > 0, 0.0, -1e30)[:, None, None]
  soft = np.exp(scores - scores.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  const = constants[None].astype(np.float64) * m[:, None, :, None] * m[:, None, None, :]
  total = const.sum(-1, keepdims=True)
  const = np.where(total > 0, const / np.where(total > 0, total, 1), 0)
  w = 1 / (1 + np.exp(-gates.astype(np.float64)))[None, :, None, None]
  pick = {'softmax': soft, 'constant': const, 'mixed': w * soft + (1 - w) * const}
  probs = np.stack([pick[kind][:, h] for h, kind in enumerate(kinds)], axis=1)
  context = np.einsum('bnqk,bknd->bqnd', probs, v)
  attn = np.einsum('bqnd,ndh->bqh', context, p['attention_output']['kernel']) + p['attention_output']['bias']

  def norm(y, name):
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + eps)
    return y * p[name]['scale'] + p[name]['bias']

  x = norm(attn + x, 'attention_layer_norm')
  y = x @ p['intermediate']['kernel'] + p['intermediate']['bias']
  y = y * 0.5 * (1 + np.vectorize(math.erf)(y / np.sqrt(2)))
  return norm(y @ p['output']['kernel'] + p['output']['bias'] + x, 'output_layer_norm'), probs


def test_one_layer_mixing_softmax_constant_and_mixed_heads_matches_numpy(bert):
  """Heads of all three kinds in one layer, not grouped by kind (mixed, softmax, constant), on a padded
  batch: hidden states and per-head probabilities equal a float64 numpy layer's."""
  config, params, ref = bert
  config, params = _shallow(config, params)
  kinds = ('mixed', 'softmax', 'constant')
  cfg = config.replace(head_kinds=(kinds,))
  ids, mask, types = _inputs(ref)
  constants = RNG.uniform(size=(1, 3, 13, 13)).astype(np.float32)
  gates = np.array([[0.8, 5.0, -5.0]], np.float32)  # only the mixed head's gate is read
  (x, got), (got_probs,) = encode(cfg, params, ids, mask, types, constants=constants, gates=gates,
                                  return_attention=True)
  want, want_probs = _numpy_layer(params['layers_0'], np.asarray(x, np.float64), mask, kinds, constants[0],
                                  gates[0], config.layer_norm_eps)
  np.testing.assert_allclose(got_probs, want_probs, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
  fast = encode(cfg, params, ids, mask, types, constants=constants, gates=gates)[-1]  # no probabilities formed
  np.testing.assert_allclose(fast, want, rtol=0, atol=TOL)
