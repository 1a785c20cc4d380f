"""The trainer: sharded step equals single-device, resume equals no interruption, NaN stops cleanly;
per-group clipping keeps SWEET's segments and Multi-Model's members apart in the parameter updates."""

import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import encoder_jax
from drivers import methods
from configs import early_exit_mnli, multi_model_mnli, sweet_demo, sweet_mnli
from pipeline import checkpoints, data, sharding, train_loop
from sweet_jax import exits, objectives

VOCAB, SEQ = 53, 8
SENTINEL = VOCAB - 1  # a token id the synthetic encoder never emits, used to poison one batch


EXIT_CONFIG = exits.ExitConfig((1, 3), 2)


def tiny_encoder_config():
  return encoder_jax.EncoderConfig(vocab_size=VOCAB, hidden_size=15, num_layers=3, num_heads=3,
                                   intermediate_size=23, max_position_embeddings=17)


def tiny_method(name='sweet'):
  cfg = tiny_encoder_config()
  pretrained = encoder_jax.init_params(cfg, jax.random.key(0))
  init, loss, predict = objectives.make_fns(name, cfg, EXIT_CONFIG, pretrained)
  return train_loop.Method(name, init, loss, predict, objectives.param_groups(name, EXIT_CONFIG))


def dataset(n=40, seed=0):
  rng = np.random.default_rng(seed)
  words = [' '.join(rng.choice(['good', 'bad', 'film', 'plot', 'dull', 'fun'], size=rng.integers(2, 7)))
           for _ in range(n)]
  labels = np.array([int(w.count('good') + w.count('fun') > w.count('bad') + w.count('dull')) for w in words])
  return data.TextDataset((tuple(words),), labels, ('neg', 'pos'))


def encode(texts_a, texts_b=None):
  """Characters -> ids (1..VOCAB-2), padded/truncated to SEQ."""
  del texts_b  # single sentences only
  ids = np.zeros((len(texts_a), SEQ), np.int32)
  for i, t in enumerate(texts_a):
    codes = [1 + ord(c) % (VOCAB - 2) for c in t][:SEQ]
    ids[i, :len(codes)] = codes
  return {'input_ids': ids, 'attention_mask': (ids > 0).astype(np.int32), 'token_type_ids': np.zeros_like(ids)}


def config(**train):
  c = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict(dict(
      num_epochs=2, batch_size=8, learning_rate=1e-3, schedule='linear', warmup_fraction=0.1, weight_decay=0.01,
      grad_clip=1.0, adam_eps=1e-6, seed=3, log_every=2, checkpoint_every=3, max_to_keep=2))
  c.train.update(train)
  c.eval = ml_collections.ConfigDict(dict(batch_size=16))
  c.mesh = ml_collections.ConfigDict(dict(model_axis=1))
  return c


def splits():
  return data.Splits(dataset(40, 0), None, dataset(20, 1))


def test_sharded_train_step_equals_single_device():
  assert jax.device_count() == 8
  method = tiny_method()
  tx = train_loop.make_optimizer(config(warmup_fraction=0.0).train, 10, param_groups=method.param_groups)
  params = method.init(jax.random.key(1))
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  batch = next(data.iterate_batches(dataset(), encode, 16, seed=0, epoch=0, shuffle=True))
  step = train_loop.make_train_step(method, tx)
  rng = jax.random.key(2)

  single, m1 = jax.jit(step)(jax.device_put(state, jax.devices()[0]), batch, rng)
  mesh = sharding.make_mesh()
  assert mesh.shape['data'] == 8
  sharded_batch = sharding.global_batch(batch, mesh)
  assert len(sharded_batch['input_ids'].sharding.device_set) == 8
  multi, m8 = jax.jit(step)(jax.device_put(state, sharding.replicated(mesh)), sharded_batch, rng)
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), single, multi))
  assert max(diffs) < 1e-5
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                                       params, single['params']))
  assert max(moved) > 1e-4  # the step did change the parameters


def test_param_sharding_splits_large_leaves_over_model_axis():
  mesh = sharding.make_mesh(model_axis=2)
  tree = {'big': np.zeros((64, 2048), np.float32), 'small': np.zeros((3,), np.float32),
          'odd': np.zeros((257, 257), np.float32)}
  specs = sharding.param_shardings(mesh, tree)
  assert specs['big'].spec == jax.sharding.PartitionSpec(None, 'model')
  assert specs['small'].spec == jax.sharding.PartitionSpec()
  assert specs['odd'].spec == jax.sharding.PartitionSpec()  # no axis divides evenly: replicate


def test_parameter_sharded_train_step_equals_replicated():
  cfg = encoder_jax.EncoderConfig(vocab_size=54, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24,
                                  max_position_embeddings=16)
  pretrained = encoder_jax.init_params(cfg, jax.random.key(0))
  init, loss, predict = objectives.make_fns('early_exit', cfg, exits.ExitConfig((1, 2), 2), pretrained)
  method = train_loop.Method('early_exit', init, loss, predict, None)
  tx = train_loop.make_optimizer(config(warmup_fraction=0.0).train, 10, param_groups=method.param_groups)
  params = method.init(jax.random.key(1))
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  batch = next(data.iterate_batches(dataset(), encode, 8, seed=0, epoch=0, shuffle=True))
  step = train_loop.make_train_step(method, tx)
  results = {}
  for model_axis in (1, 4):
    mesh = sharding.make_mesh(model_axis)
    shardings = sharding.param_shardings(mesh, state, min_size=64)
    out, _ = jax.jit(step, out_shardings=(shardings, sharding.replicated(mesh)))(
        jax.device_put(state, shardings), sharding.global_batch(batch, mesh), jax.random.key(2))
    results[model_axis] = out
  word = results[4]['params']['encoder']['embeddings']['word_embeddings']['embedding']  # [54, 16]
  assert word.sharding.spec == jax.sharding.PartitionSpec(None, 'model')  # 54 rows do not split by 4; 16 do
  assert word.addressable_shards[0].data.shape == (54, 4)
  for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[4])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _final_params(workdir, method):
  return train_loop.restore_params(config(), workdir, method)


def test_resume_after_sigterm_equals_uninterrupted(tmp_path):
  method = tiny_method()
  full = train_loop.train_and_evaluate(config(), str(tmp_path / 'full'), method, splits(), encode)
  assert full['steps'] == 10 and len(full['per_exit_accuracy']) == 2

  calls = []

  def encode_then_sigterm(texts_a, texts_b=None):
    calls.append(1)
    if len(calls) == 4:  # while preparing the 4th training batch
      os.kill(os.getpid(), signal.SIGTERM)
    return encode(texts_a, texts_b)

  part = train_loop.train_and_evaluate(config(), str(tmp_path / 'part'), method, splits(), encode_then_sigterm)
  assert part == {'interrupted': True, 'step': 4}
  assert checkpoints.Checkpointer(str(tmp_path / 'part'), read_only=True).latest_step() == 4
  assert not (tmp_path / 'part' / 'results.json').exists()
  resumed = train_loop.train_and_evaluate(config(), str(tmp_path / 'part'), method, splits(), encode)
  assert resumed['per_exit_accuracy'] == full['per_exit_accuracy']
  a, b = _final_params(str(tmp_path / 'full'), method), _final_params(str(tmp_path / 'part'), method)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  rows = [l for l in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
  assert any('"exit_1/accuracy"' in r and '"split": "eval"' in r for r in rows)


def test_nan_loss_stops_with_error_and_keeps_last_good_checkpoint(tmp_path):
  base = tiny_method()

  def poisoned_loss(params, batch, rng):
    loss, metrics = base.loss(params, batch, rng)
    loss = jnp.where(jnp.any(batch['input_ids'] == SENTINEL), jnp.nan, loss)
    return loss, dict(metrics, loss=loss)

  method = train_loop.Method('poisoned', base.init, poisoned_loss, base.predict, base.param_groups)
  calls = []

  def encode_poison_fifth(texts_a, texts_b=None):
    calls.append(1)
    out = encode(texts_a, texts_b)
    if len(calls) == 5:
      out['input_ids'][0, 0] = SENTINEL
    return out

  with pytest.raises(train_loop.TrainingDiverged, match='Loss became nan at step 5.*step 3'):
    train_loop.train_and_evaluate(config(), str(tmp_path), method, splits(), encode_poison_fifth)
  assert checkpoints.Checkpointer(str(tmp_path), read_only=True).latest_step() == 3
  params = _final_params(str(tmp_path), base)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_bad_configs_give_clear_errors(tmp_path):
  method = tiny_method()
  with pytest.raises(ValueError, match="schedule must be 'linear' or 'constant'"):
    train_loop.make_optimizer(config(schedule='cosine').train, 10, param_groups=None)
  with pytest.raises(ValueError, match='fewer than one batch'):
    train_loop.train_and_evaluate(config(batch_size=64), str(tmp_path / 'a'), method, splits(), encode)
  train_loop.train_and_evaluate(config(num_epochs=1), str(tmp_path / 'b'), method, splits(), encode)
  with pytest.raises(ValueError, match='different run'):
    train_loop.train_and_evaluate(config(batch_size=4), str(tmp_path / 'b'), method, splits(), encode)
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    train_loop.restore_params(config(), str(tmp_path / 'empty'), method)
  with pytest.raises(ValueError, match='must divide'):
    sharding.make_mesh(model_axis=3)


def test_optimizer_schedule_warms_up_and_decays():
  tx = train_loop.make_optimizer(config(warmup_fraction=0.2, weight_decay=0.0, grad_clip=0.0).train, 10,
                                 param_groups=None)
  params = {'w': jnp.ones((2, 2))}
  state = tx.init(params)
  steps = []
  for _ in range(10):
    updates, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
    steps.append(float(-updates['w'][0, 0]))
  # Adam's normalised step for a constant gradient is ~lr: so the update follows the schedule.
  assert steps[0] == pytest.approx(0.0, abs=1e-9)
  assert steps[2] == pytest.approx(1e-3, rel=1e-3)
  assert steps[2] > steps[5] > steps[9] > 0


# ----------------------------------------------------------------------------------- per-group clipping

def test_clip_by_group_norm_by_hand():
  """Each group is scaled by min(1, max_norm / its own norm): numpy by hand, three groups."""
  g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([[0.3, 0.4]]), 'c': jnp.array([6.0]), 'd': jnp.array([8.0])}
  labels = {'a': 'x', 'b': 'y', 'c': 'z', 'd': 'z'}
  out, _ = train_loop.clip_by_group_norm(2.0, lambda tree: labels).update(g, optax.EmptyState())
  np.testing.assert_allclose(out['a'], np.array([3.0, 4.0]) * 2.0 / 5.0, rtol=1e-6)  # norm 5 -> 2
  np.testing.assert_array_equal(out['b'], g['b'])  # norm 0.5 < 2: untouched
  np.testing.assert_allclose([out['c'][0], out['d'][0]], np.array([6.0, 8.0]) * 2.0 / 10.0, rtol=1e-6)
  one, _ = train_loop.clip_by_group_norm(2.0, lambda tree: jax.tree.map(lambda _: 0, tree)).update(g, None)
  ref, _ = optax.clip_by_global_norm(2.0).update(g, None)  # one group is optax's global clip, bit for bit
  for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(x, y)


def test_adam_eps_is_the_config_field():
  """Adam's first step is lr * g / (|g| + eps): by hand at two epsilons; the paper configs use 1e-8."""
  g = {'w': jnp.full((2, 2), 1e-6)}
  for eps in (1e-6, 1e-8):
    tx = train_loop.make_optimizer(config(warmup_fraction=0.0, weight_decay=0.0, grad_clip=0.0, adam_eps=eps,
                                          schedule='constant').train, 10, param_groups=None)
    updates, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_allclose(updates['w'], -1e-3 * 1e-6 / (1e-6 + eps) * np.ones((2, 2)), rtol=1e-5)
  c = config()
  del c.train['adam_eps']
  with pytest.raises(ValueError, match='train.adam_eps'):
    train_loop.make_optimizer(c.train, 10, param_groups=None)
  for paper in (sweet_mnli, early_exit_mnli, multi_model_mnli):
    assert paper.get_config().train.adam_eps == 1e-8  # Hugging Face Trainer's default, as the reference
  assert sweet_demo.get_config().train.adam_eps == 1e-6  # what the demo results were measured with


EXITS = (1, 3)  # on conftest's 3-layer tiny_bert: segments (0, 1) and (1, 3)


def built_method(checkpoint, name):
  c = sweet_demo.get_config()
  c.method, c.model.checkpoint, c.model.exit_layers = name, str(checkpoint), EXITS
  c.data.max_seq_length = 12
  c.train.learning_rate, c.train.warmup_fraction, c.train.weight_decay = 5e-5, 0.0, 0.01
  return methods.build(c, num_labels=3), c


def group_of(name, path):
  """Independent of the code under test: the segment (sweet, early_exit) or member (multi_model) of a leaf."""
  keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
  if keys[0] in ('heads', 'models'):
    return keys[1]
  if keys[1] == 'embeddings':
    return 0
  layer = int(keys[1].split('_')[1])
  return next(i for i, stop in enumerate(EXITS) if layer < stop)


def scale_exit(params, i, factor=100.0):
  """Exit i's classifier kernel times `factor`: a huge loss (and gradient) at that exit only."""
  path = ('models', i, 'head') if 'models' in params else ('heads', i)
  def scale(p, k):
    if k == len(path):
      return dict(p, classifier=dict(p['classifier'], kernel=p['classifier']['kernel'] * factor))
    if isinstance(p, tuple):
      return tuple(scale(q, k + 1) if j == path[k] else q for j, q in enumerate(p))
    return {key: scale(v, k + 1) if key == path[k] else v for key, v in p.items()}
  return scale(params, 0)


@pytest.mark.parametrize('name', ['sweet', 'multi_model', 'early_exit'])
def test_huge_loss_at_one_exit_leaves_the_other_groups_updates_bitwise(tiny_bert, name):
  """One step of the pipeline's optimizer (per-group clipping, AdamW) from params where exit i's classifier is
  scaled by 100: for SWEET every other segment with its head, and for Multi-Model every other member, takes
  bitwise the same step as without the scaling. Early-Exit (one global clip, shared layers) does not."""
  built, c = built_method(tiny_bert, name)
  tx = train_loop.make_optimizer(c.train, 10, param_groups=built.method.param_groups)
  step = jax.jit(train_loop.make_train_step(built.method, tx))
  batch = built.encode_fn(['a good film', 'dull plot', 'fun', 'bad bad film', 'the plot is fun'], None)
  batch = jax.tree.map(jnp.asarray, dict(batch, labels=np.array([0, 1, 2, 1, 0], np.int32),
                                         example_mask=np.ones(5, np.float32)))
  params = built.method.init(jax.random.key(1))

  def after_step(p):
    new, metrics = step({'params': p, 'opt_state': tx.init(p), 'step': jnp.zeros((), jnp.int32)}, batch,
                        jax.random.key(2))
    return jax.tree_util.tree_leaves_with_path(jax.device_get(new['params'])), float(metrics['grad_norm'])

  base, base_norm = after_step(params)
  assert base_norm < c.train.grad_clip  # unscaled, nothing is clipped
  for i in range(len(EXITS)):
    scaled, norm = after_step(scale_exit(params, i))
    assert norm > 2 * c.train.grad_clip  # scaled, exit i's gradient alone is clipped (and, globally, all)
    moved = {}
    for (path, a), (_, b) in zip(base, scaled):
      j = group_of(name, path)
      moved[j] = moved.get(j, False) or not np.array_equal(a, b)
    if name == 'early_exit':
      assert moved[0], f'exit {i} scaled: the shared first segment should move'
    else:
      assert moved[i] and not any(moved[j] for j in moved if j != i), (i, moved)


def test_the_optimizer_cannot_be_built_without_choosing_the_clip_groups(tiny_bert):
  """A researcher composing the functional API must say which clipping they want: neither the optimizer nor a
  Method has a silent global-clip default (a global clip lets one exit's loss rescale every SWEET segment)."""
  built, c = built_method(tiny_bert, 'sweet')
  with pytest.raises(TypeError, match='param_groups'):
    train_loop.make_optimizer(c.train, 10)  # pylint: disable=missing-kwoa
  with pytest.raises(TypeError, match='param_groups'):
    train_loop.Method('sweet', built.method.init, built.method.loss, built.method.predict)  # pylint: disable=no-value-for-parameter
  assert built.method.param_groups is not None  # the registry hands SWEET its per-segment groups
