"""Gradient conflict (sweet_jax.analysis): cosine of an exit with itself is 1, identical losses give 1,
the report's shapes and keys, and the plot is written."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from sweet_jax import analysis, exits

CFG = encoder_jax.EncoderConfig(vocab_size=37, hidden_size=10, num_layers=4, num_heads=2, intermediate_size=13,
                                max_position_embeddings=23, hidden_dropout=0.0, attention_dropout=0.0)
B, S = 3, 7


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(S)[None] < np.array([[S], [4], [2]])).astype(np.int32)
  ids = rng.integers(1, CFG.vocab_size, (B, S)).astype(np.int32) * mask
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': np.zeros_like(ids),
          'labels': np.array([0, 2, 1], np.int32), 'example_mask': np.ones(B, np.float32)}


@pytest.fixture(scope='module')
def report():
  ecfg = exits.ExitConfig((1, 3, 4), 3, classifier_dropout=0.0)
  params = exits.init_exit_model(jax.random.key(1), CFG, encoder_jax.init_params(CFG, jax.random.key(0)), ecfg)
  return analysis.gradient_conflict(CFG, ecfg, params, [make_batch(0), make_batch(1)])


def test_report_shapes_keys_and_self_similarity(report):
  groups = ['embeddings'] + [f'layers_{l}' for l in range(4)]
  assert report['groups'] == groups
  assert report['exit_layers'] == [1, 3, 4] and report['batches'] == 2 and len(report['losses']) == 3
  assert report['segment'] == {'embeddings': 0, 'layers_0': 0, 'layers_1': 1, 'layers_2': 1, 'layers_3': 2}
  json.dumps(report)  # JSON-able as it is
  for g in groups:
    m = report['cosine'][g]
    assert len(m) == 3 and all(len(row) == 3 for row in m)
    first_exit_reaching = report['segment'][g]
    for i in range(3):
      if i >= first_exit_reaching:
        assert m[i][i] == pytest.approx(1.0, abs=1e-12)  # an exit agrees with itself
        assert report['grad_norm'][g][i] > 0
      else:  # the layer sits above exit i: no gradient, no cosine
        assert m[i][i] is None and report['grad_norm'][g][i] == 0.0
    for i in range(3):
      for j in range(3):
        assert m[i][j] == m[j][i]
        if m[i][j] is not None:
          assert -1.0 <= m[i][j] <= 1.0
  assert report['mean_cosine']['layers_3'] is None  # only the last exit reaches the top segment
  assert all(report['overall'][i][i] == pytest.approx(1.0, abs=1e-12) for i in range(3))


def test_identical_losses_have_similarity_one():
  """A vector of exit losses whose first two entries are the same loss: their gradients coincide."""
  rng = np.random.default_rng(0)
  shared = {'embeddings': {'w': jnp.asarray(rng.normal(size=(4, 3)))},
            'layers_0': {'w': jnp.asarray(rng.normal(size=(3, 3))), 'b': jnp.asarray(rng.normal(size=3))}}
  x = jnp.asarray(rng.normal(size=(5, 4)))

  def losses(p, batch):
    h = jnp.tanh(batch @ p['embeddings']['w'])
    a = jnp.sum(jnp.tanh(h @ p['layers_0']['w'] + p['layers_0']['b']) ** 2)
    b = jnp.sum(jnp.sin(h @ p['layers_0']['w']))
    return jnp.stack([a, a, b])

  r = analysis.conflict_from_losses(losses, shared, [x])
  for g in ('embeddings', 'layers_0'):
    assert r['cosine'][g][0][1] == pytest.approx(1.0, abs=1e-9)
    assert r['cosine'][g][0][2] < 0.999
  assert r['overall'][0][1] == pytest.approx(1.0, abs=1e-9)


def test_two_exits_of_one_model_with_identical_losses():
  """Exits after layers 1 and 2 with the same head, layer 2 made the identity (zero attention output and
  feed-forward output: post-layer-norm of an already normalised vector): the two exits have the same loss.
  Their gradients on the embeddings coincide. (Not on layer 0: its output layer norm's scale and bias see
  exit 0's gradient as it is, but exit 1's through layer 2's layer-norm Jacobian, which projects out the
  mean and the normalised direction; upstream of that norm the projection is idempotent and cancels.)"""
  cfg = CFG.replace(num_layers=2)
  ecfg = exits.ExitConfig((1, 2), 3, classifier_dropout=0.0)
  params = exits.init_exit_model(jax.random.key(1), cfg, encoder_jax.init_params(cfg, jax.random.key(0)), ecfg)
  layer = params['encoder']['layers_1']
  for name in ('attention_output', 'output'):
    layer[name] = jax.tree.map(jnp.zeros_like, layer[name])
  params['heads'] = (params['heads'][0], params['heads'][0])
  r = analysis.gradient_conflict(cfg, ecfg, params, make_batch())
  assert r['losses'][0] == pytest.approx(r['losses'][1], rel=1e-5)
  assert r['cosine']['embeddings'][0][1] == pytest.approx(1.0, abs=1e-5)
  assert r['cosine']['layers_1'][0][1] is None  # exit 0 does not reach layer 2


def test_write_json_and_plot(report, tmp_path):
  json_path, png_path = analysis.write(report, str(tmp_path / 'analysis'))
  with open(json_path) as f:
    assert json.load(f)['groups'] == report['groups']
  assert os.path.getsize(png_path) > 10_000


def test_multi_model_params_are_refused():
  with pytest.raises(ValueError, match='share no parameter'):
    analysis.gradient_conflict(CFG, exits.ExitConfig((1, 3), 3), {'models': ()}, make_batch())
