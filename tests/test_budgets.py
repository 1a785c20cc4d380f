"""experiments/budgets.py: accuracy interpolated along a curve's frontier at fixed budgets and matched speedups,
and the area under it, against hand-computed values."""

import pytest

from experiments import budgets


def _pt(cost, acc, speedup=None):
  return {'layer_fraction': cost, 'flops_fraction': cost * 1.1, 'accuracy': acc,
          'measured_speedup': speedup if speedup is not None else 1 / cost}


POINTS = [_pt(0.2, 0.70), _pt(0.4, 0.80), _pt(0.3, 0.75), _pt(0.6, 0.78), _pt(1.0, 0.85)]


def test_frontier_drops_dominated_points():
  x, y = budgets.frontier(POINTS, 'layer_fraction')
  assert x.tolist() == [0.2, 0.3, 0.4, 1.0] and y.tolist() == [0.70, 0.75, 0.80, 0.85]  # (0.6, 0.78) is beaten


def test_accuracy_at_budgets_by_hand():
  at = lambda b, cost='layer_fraction': budgets.accuracy_at(POINTS, cost, b)
  assert at(0.25) == pytest.approx(0.725)  # halfway between 0.70 and 0.75
  assert at(1 / 3) == pytest.approx(0.75 + 0.05 * (1 / 3 - 0.3) / 0.1)
  assert at(0.5) == pytest.approx(0.80 + 0.05 * 0.1 / 0.6)  # on the segment to 1.0, not at the beaten 0.78
  assert at(0.75) == pytest.approx(0.80 + 0.05 * 0.35 / 0.6)
  assert at(0.4) == pytest.approx(0.80) and at(1.5) == pytest.approx(0.85)
  assert at(0.1) is None  # nothing runs that cheaply
  assert at(0.33, 'flops_fraction') == pytest.approx(0.75 + 0.05 * (0.33 - 0.33) / 0.11)
  with pytest.raises(ValueError, match='cost must be one of'):
    at(0.5, 'seconds')


def test_the_issue_case_grid_points_against_interpolation():
  # Early-Exit's second threshold at 0.32 of the layers, Multi-Model's at 0.345, just over a third: the best grid
  # point within 1/3 compares Multi-Model's one-layer point with Early-Exit's two-layer one.
  ee = [_pt(0.17, 0.72), _pt(0.32, 0.793), _pt(0.5, 0.82)]
  mm = [_pt(0.17, 0.76), _pt(0.345, 0.798), _pt(0.5, 0.82)]
  assert budgets.accuracy_at(ee, 'layer_fraction', 1 / 3) == pytest.approx(0.793 + 0.027 * (1 / 3 - 0.32) / 0.18)
  assert budgets.accuracy_at(mm, 'layer_fraction', 1 / 3) == pytest.approx(0.76 + 0.038 * (1 / 3 - 0.17) / 0.175)
  assert budgets.accuracy_at(mm, 'layer_fraction', 1 / 3) > 0.79  # not the 0.76 of its one-layer point


def test_matched_speedup_by_hand():
  pts = [_pt(0.25, 0.70, 4.0), _pt(0.5, 0.80, 2.0), _pt(0.45, 0.78, 2.5), _pt(1.0, 0.84, 0.9)]
  # Time fractions 0.25, 0.5, 0.4 (2.5x), 1.11: at 3x (1/3) between 0.25 (0.70) and 0.4 (0.78).
  assert budgets.accuracy_at_speedup(pts, 3.0) == pytest.approx(0.70 + 0.08 * (1 / 3 - 0.25) / 0.15)
  assert budgets.accuracy_at_speedup(pts, 2.0) == pytest.approx(0.80)
  assert budgets.accuracy_at_speedup(pts, 5.0) is None


def test_mean_accuracy_is_the_area_by_hand():
  # Trapezoids over the frontier (0.2, 0.70), (0.3, 0.75), (0.4, 0.80), (1.0, 0.85).
  area = (0.70 + 0.75) / 2 * 0.1 + (0.75 + 0.80) / 2 * 0.1 + (0.80 + 0.85) / 2 * 0.6
  assert budgets.mean_accuracy(POINTS, 'layer_fraction', 0.2, 1.0) == pytest.approx(area / 0.8)
  # From 0.25: the first piece starts at 0.725.
  part = (0.725 + 0.75) / 2 * 0.05 + (0.75 + 0.80) / 2 * 0.1 + (0.80 + 0.85) / 2 * 0.6
  assert budgets.mean_accuracy(POINTS, 'layer_fraction', 0.25, 1.0) == pytest.approx(part / 0.75)
  # Past the last point the accuracy stays at 0.85.
  assert budgets.mean_accuracy(POINTS, 'layer_fraction', 1.0, 2.0) == pytest.approx(0.85)
  assert budgets.mean_accuracy(POINTS, 'layer_fraction', 0.1, 1.0) is None
  assert budgets.common_range([POINTS, [_pt(0.3, 0.6), _pt(1.0, 0.9)]], 'layer_fraction') == (0.3, 1.0)


def test_mixture_reaches_the_interpolated_accuracy():
  # 0.5 of the layers lies between frontier points 1 (0.4) and 4 (1.0): shares 5/6 and 1/6.
  mix = budgets.mixture(POINTS, 'layer_fraction', 0.5)
  assert [i for i, _ in mix] == [1, 4] and mix[0][1] == pytest.approx(5 / 6)
  assert sum(w * POINTS[i]['accuracy'] for i, w in mix) == pytest.approx(
      budgets.accuracy_at(POINTS, 'layer_fraction', 0.5))
  assert budgets.mixture(POINTS, 'layer_fraction', 2.0) == [(4, 1.0)]
  assert budgets.mixture(POINTS, 'layer_fraction', 0.1) is None


@pytest.mark.parametrize('seed', range(8))
def test_per_example_area_integrates_each_examples_expected_correctness(seed):
  """paired.over_range (the area claim's per-example quantity) against a brute-force integral of each example's
  expected correctness over a fine grid of budgets, on seeded exit patterns: accuracies from 0.5 to 0.95 per
  exit, confidences uniform or skewed high (most examples leave at the first exit) or low (most run to the end)."""
  import numpy as np
  from drivers.predictions import Predictions, dense_curve
  from experiments import paired
  rng = np.random.default_rng(seed)
  n, layers = 200, np.array([1, 4, 6, 12], np.int32)
  labels = rng.integers(0, 2, n).astype(np.int8)
  right = rng.random((4, n)) < rng.uniform(0.5, 0.95, (4, 1))
  conf = (0.5 + 0.5 * rng.random((4, n)) ** [1.0, 0.2, 5.0][seed % 3]).astype(np.float32)
  p = Predictions(np.where(right, labels, 1 - labels).astype(np.int8), conf, labels, np.arange(n, dtype=np.int32),
                  layers, 'exit_layer', 'hash', method='early_exit', layers_run=layers,
                  exit_flops=np.repeat(layers[:, None], n, 1).astype(float), full_flops=np.full(n, 12.0))
  curve = dense_curve(p)
  lo = budgets.common_range([curve], 'layer_fraction')[0] + 0.01 * seed
  got = paired.over_range(lo, 1.0)(p, {})
  fine = np.linspace(lo, 1.0, 4001)
  each = np.stack([paired._mixed(p, curve, 'layer_fraction', b) for b in fine])  # [budgets, N]
  want = np.trapezoid(each, fine, axis=0) / (1.0 - lo)
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert np.ptp(got) > 0.5  # examples differ: the test is not of a constant
  assert got.mean() == pytest.approx(budgets.mean_accuracy(curve, 'layer_fraction', lo, 1.0), abs=1e-12)
  assert np.isnan(paired.over_range(lo / 2, 1.0)(p, {})).all()  # the sweep does not reach that cheap
