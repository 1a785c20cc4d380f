"""drivers.predictions: the per-example outputs sweet_eval stores beside its curve reproduce the recorded per-exit
accuracies and every curve point; the file round-trips; its invariant names the bad field."""

import json

import numpy as np
import pytest

from tests.adaptive_models import CFG, ECFG
from tests.test_sweet_eval import encode


def _splits(seed: int, n_eval: int):
  from pipeline import data
  rng = np.random.default_rng(seed)
  words = ['good', 'bad', 'film', 'plot', 'dull', 'fun']

  def dataset(n):
    texts = tuple(' '.join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(n))
    return data.TextDataset((texts,), rng.integers(0, 3, n), ('a', 'b', 'c'))
  return data.Splits(dataset(10), dataset(12), dataset(n_eval))


@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_stored_predictions_reproduce_per_exit_accuracy_and_curve(models, tmp_path, method):
  import ml_collections
  from drivers import predictions, sweet_eval
  splits = _splits(11, 31)
  # Thresholds over the calibrated confidences of these heads (about 0.33-0.9), plus 0 and 1 (all at the first
  # and at the last exit): some thresholds split the examples between all three exits.
  grid = (0.0, *np.round(np.linspace(0.3, 0.9, 25), 3).tolist(), 1.0)
  config = ml_collections.ConfigDict({'eval': {'batch_size': 4, 'thresholds': grid, 'timing_examples': 4,
                                               'timing_repeats': 2}})
  out = sweet_eval.evaluate(config, str(tmp_path), method=method, encoder_config=CFG, exit_config=ECFG,
                            params=models[method], splits=splits, encode_fn=encode)
  curve = json.loads((tmp_path / 'eval' / 'curve.json').read_text())
  p = predictions.Predictions.load(str(tmp_path / 'eval' / 'predictions.npz'))
  assert p.predictions.dtype == np.int8 and p.confidence.dtype == np.float32 and p.method == method
  np.testing.assert_array_equal(p.index, np.arange(31))
  np.testing.assert_array_equal(p.labels, splits.eval.labels)
  assert p.test_sha256 == predictions.dataset_sha256(splits.eval) != predictions.dataset_sha256(splits.train)
  assert p.params_sha256 == predictions.tree_sha256(models[method])
  np.testing.assert_allclose(p.correct().mean(1), out['per_exit_accuracy'], rtol=0, atol=1e-12)
  counts = set()
  for pt in curve['points']:
    got = predictions.point_at(p, pt['threshold'])
    assert got['accuracy'] == pt['accuracy'], pt['threshold']
    assert got['layer_fraction'] == pytest.approx(pt['layer_fraction'], rel=1e-12)
    assert got['flops_fraction'] == pytest.approx(pt['flops_fraction'], rel=1e-9)
    counts.add(tuple(pt['exit_counts']))
  assert len(counts) > 5  # the grid moves examples between exits: the comparison is not of one trivial point
  assert len(predictions.dense_curve(p)) == 101
  # Every timed repeat's speedup is recorded beside their median (the spread between timings).
  for pt in curve['points']:
    assert len(pt['measured_speedups']) == 2 and pt['measured_speedup'] == pytest.approx(np.median(pt['measured_speedups']))


def test_exits_at_by_hand():
  from drivers.predictions import Predictions, correct_at, exits_at
  conf = np.array([[0.9, 0.4, 0.5], [0.2, 0.8, 0.5], [0.1, 0.1, 0.1]], np.float32)
  pred = np.array([[1, 0, 2], [0, 1, 1], [2, 2, 0]], np.int8)
  p = Predictions(pred, conf, np.array([1, 1, 0], np.int8), np.arange(3, dtype=np.int32),
                  np.array([1, 2, 4], np.int32), 'exit_layer', 'x')
  # threshold 0.5: example 0 leaves at exit 0 (0.9), example 1 at exit 1 (0.8), example 2 at exit 0 (0.5 >= 0.5)
  np.testing.assert_array_equal(exits_at(p, 0.5)[0], [0, 1, 0])
  np.testing.assert_array_equal(exits_at(p, 0.5)[1], [1, 1, 2])
  # threshold 0.95: nobody is confident enough; the last exit answers all
  np.testing.assert_array_equal(exits_at(p, 0.95)[0], [2, 2, 2])
  np.testing.assert_array_equal(correct_at(p, 0.95), [False, False, True])


def test_predictions_round_trip_and_name_the_bad_field(tmp_path):
  from drivers.predictions import Predictions
  p = Predictions(np.zeros((2, 5), np.int8), np.ones((2, 5), np.float32), np.zeros(5, np.int8),
                  np.arange(5, dtype=np.int32), np.array([3, 7], np.int32), 'constant_heads', 'abc', method='papa')
  p.save(str(tmp_path / 'p.npz'))
  q = Predictions.load(str(tmp_path / 'p.npz'))
  assert q.test_sha256 == 'abc' and q.variant_name == 'constant_heads' and q.method == 'papa'
  np.testing.assert_array_equal(q.variants, [3, 7])
  with pytest.raises(ValueError, match=r'confidence has shape \(2, 4\), expected \(2, 5\)'):
    Predictions(np.zeros((2, 5), np.int8), np.ones((2, 4), np.float32), np.zeros(5, np.int8),
                np.arange(5), np.array([3, 7]), 'exit_layer', 'abc')


from tests.test_papa_experiment import setup  # noqa: E402,F401  (the tiny PAPA workdir fixture)


def test_papa_stores_per_k_outputs_that_reproduce_its_accuracies(setup, tmp_path):
  from drivers import papa_experiment, predictions
  from pipeline import data
  config, _ = setup
  config = config.copy_and_resolve_references()
  config.papa.ks = (0, 'half', 'all')
  workdir = tmp_path / 'work'
  res = papa_experiment.run(config, workdir)
  path = workdir / 'papa' / 'predictions.npz'
  p = predictions.Predictions.load(str(path))
  assert p.variant_name == 'constant_heads' and p.variants.tolist() == [0, 3, 6] and p.method == 'papa'
  np.testing.assert_array_equal(p.correct().mean(1), [r['accuracy'] for r in res['results']])
  splits = data.load_splits(config.data)
  np.testing.assert_array_equal(p.labels, splits.eval.labels)
  assert p.test_sha256 == predictions.dataset_sha256(splits.eval)
  assert np.all((p.confidence >= 0.5 - 1e-6) & (p.confidence <= 1 + 1e-6))  # two classes
  # A resumed run reuses every probe unscored: it leaves the file alone; eval.py's rescore writes it again.
  stamp = path.stat().st_mtime_ns
  papa_experiment.run(config, workdir)
  assert path.stat().st_mtime_ns == stamp
  path.unlink()
  rescored = papa_experiment.rescore(config, workdir)
  q = predictions.Predictions.load(str(path))
  np.testing.assert_array_equal(q.predictions, p.predictions)
  np.testing.assert_array_equal(q.correct().mean(1), [r['accuracy'] for r in rescored['results']])
