"""Training-side proofs for sweet_jax.exits and objectives: SWEET's separation is exact, Early-Exit shares,
Multi-Model members share nothing; exit weights; [CLS] and masked-mean pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from drivers import methods
from configs import sweet_demo
from sweet_jax import exits, objectives

# Prime sizes catch transposes; 5 layers cut into segments (0, 1), (1, 3), (3, 5).
CFG = encoder_jax.EncoderConfig(vocab_size=37, hidden_size=10, num_layers=5, num_heads=2, intermediate_size=13,
                                max_position_embeddings=23, hidden_dropout=0.0, attention_dropout=0.0)
EXIT_LAYERS = (1, 3, 5)
B, S, C = 3, 7, 3
# Softmax attention is invariant to the key bias (it adds the same q.b to every score of a query), so its
# gradient is zero up to rounding wherever it is reached; "non-zero inside" skips it.
KEY_BIAS = ('key', 'bias')


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  lens = np.array([S, 4, 2])
  mask = (np.arange(S)[None] < lens[:, None]).astype(np.int32)
  ids = rng.integers(1, CFG.vocab_size, (B, S)).astype(np.int32) * mask
  types = np.zeros_like(ids)
  types[0, 4:] = 1
  return {'input_ids': jnp.asarray(ids), 'attention_mask': jnp.asarray(mask), 'token_type_ids': jnp.asarray(types),
          'labels': jnp.asarray([0, 2, 1], jnp.int32), 'example_mask': jnp.ones((B,), jnp.float32)}


@pytest.fixture(scope='module')
def pretrained():
  return encoder_jax.init_params(CFG, jax.random.key(0))


def exit_config(pooling='cls'):
  return exits.ExitConfig(EXIT_LAYERS, C, pooling=pooling, classifier_dropout=0.0)


def owner(path, exit_layers=EXIT_LAYERS):
  """Which segment (or head) a parameter path of the exit-model layout belongs to: ('segment'|'head', i)."""
  keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
  if keys[0] == 'heads':
    return ('head', keys[1])
  name = keys[1]
  if name == 'embeddings':
    return ('segment', 0)
  layer = int(name.split('_')[1])
  return ('segment', next(i for i, stop in enumerate(exit_layers) if layer < stop))


BUILT_EXITS = (1, 2, 3)  # on conftest's 3-layer tiny_bert
_JACOBIANS = {}


def exit_loss_grads(method, tiny_bert, i):
  """Gradient of exit i's loss alone (its `exit_i/loss` metric), in the layout of `method`'s params, through
  the registry: methods.build(config).method.loss, as train.py trains it. One jitted jacrev over the vector
  of exit losses per method, shared by the tests."""
  if method not in _JACOBIANS:
    config = sweet_demo.get_config()
    config.method, config.model.checkpoint, config.model.exit_layers = method, str(tiny_bert), BUILT_EXITS
    config.data.max_seq_length = 16
    built = methods.build(config, num_labels=C)
    batch = built.encode_fn(['a good film', 'dull', 'the plot is fun'], ['yes', 'no, not at all', 'fun'])
    batch = dict(batch, labels=np.array([0, 2, 1], np.int32), example_mask=np.ones(3, np.float32))
    assert batch['token_type_ids'].max() == 1  # pairs: both token types carry gradient
    params = built.method.init(jax.random.key(1))

    def losses(p):
      metrics = built.method.loss(p, batch, None)[1]
      return jnp.stack([metrics[f'exit_{e}/loss'] for e in range(len(BUILT_EXITS))])
    _JACOBIANS[method] = jax.device_get(jax.jit(jax.jacrev(losses))(params))
  return jax.tree.map(lambda g: g[i], _JACOBIANS[method])


def nonzero(leaf):
  return bool(np.any(np.asarray(leaf) != 0))


@pytest.mark.parametrize('i', range(len(BUILT_EXITS)))
def test_sweet_gradient_of_exit_stays_in_its_segment_and_head(tiny_bert, i):
  grads = exit_loss_grads('sweet', tiny_bert, i)
  inside = outside = 0
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    kind, j = owner(path, BUILT_EXITS)
    if (kind, j) in (('segment', i), ('head', i)):
      inside += 1
      if tuple(getattr(k, 'key', None) for k in path[-2:]) != KEY_BIAS:
        assert nonzero(g), f'no gradient on {jax.tree_util.keystr(path)}, inside segment/head {i}'
    else:
      outside += 1
      # Exactly zero, not approximately: stop_gradient cuts the path, nothing leaks.
      assert np.all(np.asarray(g) == 0.0), f'exit {i} leaks gradient into {jax.tree_util.keystr(path)}'
  assert inside and outside


@pytest.mark.parametrize('i', range(len(BUILT_EXITS)))
def test_early_exit_gradient_reaches_every_lower_segment(tiny_bert, i):
  grads = exit_loss_grads('early_exit', tiny_bert, i)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    kind, j = owner(path, BUILT_EXITS)
    reached = (kind == 'segment' and j <= i) or (kind, j) == ('head', i)
    if not reached:
      assert np.all(np.asarray(g) == 0.0), jax.tree_util.keystr(path)
    elif tuple(getattr(k, 'key', None) for k in path[-2:]) != KEY_BIAS:
      assert nonzero(g), f'exit {i} does not reach {jax.tree_util.keystr(path)}'


def test_clip_groups_are_the_segments_and_members(pretrained):
  """SWEET's clip groups (objectives.param_groups) are exactly owner()'s segments, head i with segment i;
  Multi-Model's are its members; Early-Exit has one (None)."""
  ecfg = exit_config()
  params = exits.init_exit_model(jax.random.key(1), CFG, pretrained, ecfg)
  labels = objectives.param_groups('sweet', ecfg)(params)
  for path, label in jax.tree_util.tree_leaves_with_path(labels):
    assert owner(path)[1] == label, (jax.tree_util.keystr(path), label)
  assert set(jax.tree.leaves(labels)) == {0, 1, 2}
  mm = exits.init_multi_model(jax.random.key(1), CFG, pretrained, ecfg)
  for path, label in jax.tree_util.tree_leaves_with_path(objectives.param_groups('multi_model', ecfg)(mm)):
    assert path[1].idx == label
  assert objectives.param_groups('early_exit', ecfg) is None
  with pytest.raises(ValueError, match="Unexpected encoder parameter 'pooler'"):
    exits.exit_model_groups(ecfg, {'encoder': {'pooler': {'kernel': 0}}, 'heads': ()})


def test_multi_model_members_share_no_parameter(pretrained):
  params = exits.init_multi_model(jax.random.key(1), CFG, pretrained, exit_config())
  leaves = jax.tree.leaves(params)
  pointers = [leaf.unsafe_buffer_pointer() for leaf in leaves]
  assert len(set(map(id, leaves))) == len(leaves), 'a leaf object appears twice'
  assert len(set(pointers)) == len(pointers), 'two leaves share a device buffer'
  # Nor with the pretrained tree they were copied from.
  assert not set(pointers) & {leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(pretrained)}
  for model, depth in zip(params['models'], EXIT_LAYERS):
    assert sorted(model['encoder']) == sorted(['embeddings'] + [f'layers_{l}' for l in range(depth)])


@pytest.mark.parametrize('i', range(len(BUILT_EXITS)))
def test_multi_model_gradient_of_member_stays_in_member(tiny_bert, i):
  grads = exit_loss_grads('multi_model', tiny_bert, i)
  for j, member in enumerate(grads['models']):
    for path, g in jax.tree_util.tree_leaves_with_path(member):
      if j != i:
        assert np.all(np.asarray(g) == 0.0), f'member {i} leaks into member {j} {jax.tree_util.keystr(path)}'
      elif tuple(getattr(k, 'key', None) for k in path[-2:]) != KEY_BIAS:
        assert nonzero(g), f'member {i} has no gradient on {jax.tree_util.keystr(path)}'


def test_exit_weight_schemes():
  np.testing.assert_array_equal(objectives.exit_weights((1, 4, 6, 12)), [1, 1, 1, 1])
  # PABEE: exit i weighted by its layer depth, over the sum of depths (BERT-base exits: 1 + 4 + 6 + 12 = 23).
  np.testing.assert_allclose(objectives.exit_weights((1, 4, 6, 12), 'linear'),
                             [1 / 23, 4 / 23, 6 / 23, 12 / 23], rtol=1e-6)
  np.testing.assert_allclose(objectives.exit_weights((1, 2, 3, 4), 'linear'), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  np.testing.assert_array_equal(objectives.exit_weights((1, 4, 6, 12), 'geometric', 3.0), [1, 3, 9, 27])
  with pytest.raises(ValueError, match='Unknown exit weighting'):
    objectives.exit_weights((1, 2), 'cubic')


# Exits after layers 1, 3, 5 (EXIT_LAYERS), weights by hand.
HAND_WEIGHTS = {'equal': [1.0, 1.0, 1.0], 'linear': [1 / 9, 3 / 9, 5 / 9], 'geometric': [1.0, 2.0, 4.0]}


@pytest.mark.parametrize('weighting', ['equal', 'linear', 'geometric'])
def test_loss_is_the_weighted_sum_of_exit_losses(pretrained, weighting):
  ecfg = exit_config()
  init, loss, _ = objectives.make_fns('early_exit', CFG, ecfg, pretrained, weighting=weighting, geometric_ratio=2.0)
  params = init(jax.random.key(2))
  batch = make_batch()
  total, metrics = loss(params, batch, None)
  per_exit = np.array([metrics[f'exit_{i}/loss'] for i in range(ecfg.num_exits)])
  np.testing.assert_allclose(float(total), float((np.array(HAND_WEIGHTS[weighting]) * per_exit).sum()), rtol=1e-6)


def test_pooling_cls_takes_the_first_token_and_mean_ignores_padding():
  rng = np.random.default_rng(3)
  hidden = jnp.asarray(rng.normal(size=(B, S, 5)), jnp.float32)
  mask = jnp.asarray((np.arange(S)[None] < np.array([[S], [4], [1]])).astype(np.int32))
  np.testing.assert_array_equal(np.asarray(exits.pool(hidden, mask, 'cls')), np.asarray(hidden[:, 0]))
  mean = np.asarray(exits.pool(hidden, mask, 'mean'))
  for b, n in enumerate([S, 4, 1]):
    np.testing.assert_allclose(mean[b], np.asarray(hidden[b, :n]).mean(0), rtol=1e-6)
  # Whatever sits at padded positions does not move the masked mean.
  noisy = jnp.where(mask[..., None] > 0, hidden, 1e3)
  np.testing.assert_allclose(np.asarray(exits.pool(noisy, mask, 'mean')), mean, rtol=1e-6)


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_model_logits_ignore_padded_tokens(pretrained, pooling):
  """Real tokens never attend to padding and the pooled vector skips it: other ids there change nothing."""
  ecfg = exit_config(pooling)
  params = exits.init_exit_model(jax.random.key(1), CFG, pretrained, ecfg)
  batch = make_batch()
  other = dict(batch, input_ids=jnp.where(batch['attention_mask'] > 0, batch['input_ids'], 5))
  a = exits.forward(CFG, ecfg, params, batch, stop_gradient=False)
  b = exits.forward(CFG, ecfg, params, other, stop_gradient=False)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_mean_and_cls_pooling_differ(pretrained):
  ecfg_c, ecfg_m = exit_config('cls'), exit_config('mean')
  params = exits.init_exit_model(jax.random.key(1), CFG, pretrained, ecfg_c)
  batch = make_batch()
  a = exits.forward(CFG, ecfg_c, params, batch, stop_gradient=False)
  b = exits.forward(CFG, ecfg_m, params, batch, stop_gradient=False)
  assert not np.allclose(np.asarray(a), np.asarray(b))
