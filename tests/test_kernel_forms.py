"""Every kernel form (EncoderConfig.kernels) computes the same encoder, on every architecture.

'cpu_tuned' and 'portable' differ in how they compute (encoder_jax.tuning.pick): softmax normalised after
the value matmul or jax.nn.dot_product_attention, DeBERTa's relative term per head or batched, MPNet's bias
as a one-hot matmul or a gather, the bias gradient as a matmul or a reduction. Here both reproduce the
Hugging Face fixtures (tests/fixtures/make_fixtures.py) on the fused path (no probabilities returned), and
their gradients agree within float32 rounding on seeded batches of skewed lengths, with softmax, constant and
mixed heads in one model; 'auto' resolves by the platform a program is lowered for. No torch is imported here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from tests.test_architectures import _fixture  # (config, params, reference arrays, inputs) of a fixture

KINDS = ['bert', 'roberta', 'mpnet', 'deberta_v1', 'deberta_v2', 'deberta_v2_sep']  # every family, v2 both ways
FORMS = ('cpu_tuned', 'portable')
TOL = 1e-5
encode = jax.jit(encoder_jax.encode, static_argnums=0)


@pytest.mark.parametrize('kind', KINDS)
def test_every_form_reproduces_the_fixture(kind):
  """Hidden states of every layer within 1e-5 of transformers' for each form, at real tokens (DeBERTa masks
  padded query rows, which no real token can see; test_architectures compares the rest)."""
  config, params, ref, inputs = _fixture(kind)
  real = ref['attention_mask'].astype(bool)
  for form in FORMS:
    hiddens = encode(config.replace(kernels=form), params, *inputs)
    for layer, (got, want) in enumerate(zip(hiddens, ref['hidden_states'])):
      np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=0, atol=TOL,
                                 err_msg=f'{kind} {form} hidden {layer}')


@pytest.mark.parametrize('kind', ['mpnet', 'deberta_v2'])
def test_portable_forms_in_bfloat16_are_as_close_to_float32_as_the_tuned(kind):
  """What a GPU or TPU runs: the portable forms in bfloat16, really in bfloat16, drift from float32 no more
  than the CPU-tuned forms in bfloat16 do (up to a factor 2 of rounding luck). The drift itself is bf16's:
  up to 0.14 on DeBERTa v2's fixture in either form."""
  config, params, ref, inputs = _fixture(kind)
  real = ref['attention_mask'].astype(bool)
  f32 = encode(config.replace(kernels='cpu_tuned'), params, *inputs)
  drift = {}
  for form in FORMS:
    bf16 = encode(config.replace(kernels=form, dtype='bfloat16'), params, *inputs)
    assert bf16[-1].dtype == jnp.bfloat16
    drift[form] = max(float(np.abs(np.asarray(a, np.float32)[real] - np.asarray(b)[real]).max())
                      for a, b in zip(bf16, f32))
  assert 0 < drift['portable'] <= 2 * drift['cpu_tuned'], drift


def _skewed_batch(config, seed, n=5, seq=13):
  """Ids and a right-padded mask whose lengths are drawn towards the short end (1 token up to seq); the
  first example fills the sequence."""
  rng = np.random.default_rng(seed)
  lengths = np.minimum(seq, 1 + rng.geometric(0.25, n))
  lengths[0] = seq
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(config.pad_token_id + 1, config.vocab_size, (n, seq)), config.pad_token_id)
  types = None
  if config.type_vocab_size:
    types = rng.integers(0, config.type_vocab_size, (n, seq)).astype(np.int32) * mask
  return ids.astype(np.int32), mask, types


@functools.partial(jax.jit, static_argnums=0)
def _grads(config, params, inputs, constants, gates, weights):
  """Gradients of a fixed linear functional of the last hidden states at real tokens, with respect to the
  parameters and the mixed heads' gates (jitted once per config: every seed reuses the program)."""
  ids, mask, types = inputs

  def loss(p, g):
    last = encoder_jax.encode(config, p, ids, mask, types, constants=constants, gates=g)[-1]
    return (last * weights * mask[..., None]).sum()

  return jax.grad(loss, argnums=(0, 1))(params, gates)


def _rounding_scale(grads, path, leaf):
  """The size of the sums whose rounding a gradient leaf carries: its largest entry, except where the true
  gradient is 0. Softmax is invariant to the key bias and to DeBERTa's position-key bias (each shifts all
  of a query's scores alike); what any form gives there is rounding noise of sums the size of the matching
  kernel's gradient."""
  keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
  if keys[-2:] in (['key', 'bias'], ['pos_key', 'bias']):
    return np.abs(np.asarray(grads[keys[0]][keys[1]][keys[2]]['kernel'])).max()
  return np.abs(leaf).max()


@pytest.mark.parametrize('kind', KINDS)
def test_every_form_has_the_same_gradients(kind):
  """Per seed, the forms' gradients differ by at most float32 rounding: 1e-4 of the largest entry of each
  parameter's gradient (summation order differs between the forms, nothing else; _rounding_scale)."""
  config, params, _, _ = _fixture(kind)
  # Softmax, constant and mixed heads in one model: every kernel, and every head's score term.
  config = config.with_heads('constant', [(0, 1), (2, 0)]).with_heads('mixed', [(1, 2), (2, 1)])
  rng = np.random.default_rng(7)
  constants = rng.uniform(size=(3, 3, 13, 13)).astype(np.float32)
  gates = jnp.asarray(rng.standard_normal((3, 3)).astype(np.float32))
  for seed in range(3):
    inputs = _skewed_batch(config, seed)
    weights = rng.standard_normal((5, 13, config.hidden_size)).astype(np.float32)
    grads = {form: _grads(config.replace(kernels=form), params, inputs, constants, gates, weights)
             for form in FORMS}
    flat = {form: jax.tree_util.tree_leaves_with_path(g) for form, g in grads.items()}
    for (path, a), (_, b) in zip(*flat.values()):
      a, b = np.asarray(a), np.asarray(b)
      scale = _rounding_scale(grads['cpu_tuned'], path, a)
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale + 1e-7,
                                 err_msg=f'{kind} seed {seed} {jax.tree_util.keystr(path)}')
    assert np.abs(np.asarray(grads['portable'][1])).max() > 1e-3  # the gates are reached


def _lowered(config, platform):
  params = jax.eval_shape(lambda k: encoder_jax.init_params(config.replace(kernels='cpu_tuned'), k),
                          jax.random.key(0))
  ids = jax.ShapeDtypeStruct((2, 7), jnp.int32)
  fn = lambda p, i, m: encoder_jax.encode(config, p, i, m)[-1]
  return jax.jit(fn).trace(params, ids, ids).lower(lowering_platforms=(platform,)).as_text()


def test_auto_picks_by_the_platform_lowered_for():
  """DeBERTa's CPU-tuned relative term is a loop over heads (lax.map: a `while` in the lowered program);
  'auto' lowers it for a CPU and the batched form for a GPU or a TPU, whatever machine lowers."""
  config, _, _, _ = _fixture('deberta_v2')
  loops = {form: {p: 'stablehlo.while' in _lowered(config.replace(kernels=form), p) for p in ('cpu', 'cuda', 'tpu')}
           for form in ('auto', 'cpu_tuned', 'portable')}
  assert loops == {'auto': {'cpu': True, 'cuda': False, 'tpu': False},
                   'cpu_tuned': {'cpu': True, 'cuda': True, 'tpu': True},
                   'portable': {'cpu': False, 'cuda': False, 'tpu': False}}


def test_an_unknown_form_is_refused_naming_the_field():
  with pytest.raises(ValueError, match='kernels must be one of'):
    encoder_jax.EncoderConfig(kernels='gpu')


@pytest.mark.parametrize('kernels', ['portable', 'cpu_tuned'])
def test_the_config_file_field_reaches_the_encoder(tiny_bert, kernels):
  """`--config.model.kernels=...` is the encoder's kernel form; the config files default to 'auto'."""
  from configs import sweet_demo
  from drivers import methods
  config = sweet_demo.get_config()
  assert config.model.kernels == 'auto'
  config.model.checkpoint, config.model.exit_layers = str(tiny_bert), (1, 3)
  config.model.kernels = kernels
  assert methods.build(config, num_labels=2).encoder_config.kernels == kernels
