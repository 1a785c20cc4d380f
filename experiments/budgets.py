"""Accuracy at matched cost: a speed-accuracy curve read at fixed budgets, not at whichever thresholds the grid
happened to have.

A curve is a list of points {accuracy, layer_fraction, flops_fraction, measured_speedup, ...} (curve.json's, or
drivers.predictions.dense_curve's). Its frontier keeps the points no cheaper point beats. Between two frontier
points the accuracy is interpolated linearly in the cost: sending a random share w of the examples through one
threshold and the rest through the other costs, and scores, the same mix of the two in expectation, so every
point on the segment is reachable. Costs: 'layer_fraction', 'flops_fraction', or 'time_fraction' (1 / measured
speedup: accuracy at a matched measured speedup s is accuracy_at(points, 'time_fraction', 1 / s)).

Below the cheapest point a curve has no accuracy (None: nothing runs that cheaply); above its most expensive
frontier point it keeps that point's accuracy (a larger budget need not be spent).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

LAYER_BUDGETS = (0.25, 1 / 3, 0.5, 0.75)
SPEEDUPS = (1.5, 2.0, 3.0)
COSTS = ('layer_fraction', 'flops_fraction', 'time_fraction')


def cost_of(point: dict[str, Any], cost: str) -> float:
  """A point's cost on one of COSTS."""
  if cost == 'time_fraction':
    return 1.0 / float(point['measured_speedup'])
  if cost not in COSTS:
    raise ValueError(f'cost must be one of {COSTS}, got {cost!r}.')
  return float(point[cost])


def frontier_indices(points: Sequence[dict[str, Any]], cost: str) -> list[int]:
  """Indices of the points no cheaper (or equally cheap) point beats, by ascending cost."""
  if not points:
    raise ValueError('A curve needs at least one point.')
  order = sorted(range(len(points)), key=lambda i: (cost_of(points[i], cost), -float(points[i]['accuracy'])))
  out: list[int] = []
  for i in order:
    if not out or float(points[i]['accuracy']) > float(points[out[-1]]['accuracy']):
      out.append(i)
  return out


def frontier(points: Sequence[dict[str, Any]], cost: str) -> tuple[np.ndarray, np.ndarray]:
  """The frontier (frontier_indices) as (cost [K], accuracy [K]), the accuracies strictly increasing."""
  idx = frontier_indices(points, cost)
  return (np.array([cost_of(points[i], cost) for i in idx]), np.array([float(points[i]['accuracy']) for i in idx]))


def mixture(points: Sequence[dict[str, Any]], cost: str, budget: float) -> list[tuple[int, float]] | None:
  """How accuracy_at reaches `budget`: [(point index, share of the examples)] of the one or two frontier points
  it mixes (shares sum to 1); None below the cheapest point. Per-example outputs mixed with these shares give
  the paired tests their expected correctness at the budget."""
  idx = frontier_indices(points, cost)
  x = [cost_of(points[i], cost) for i in idx]
  if budget < x[0] - 1e-12:
    return None
  k = int(np.searchsorted(x, budget, side='right'))  # x[k - 1] <= budget < x[k]
  if k >= len(x):
    return [(idx[-1], 1.0)]
  w = (x[k] - budget) / (x[k] - x[k - 1])
  return [(idx[k - 1], w), (idx[k], 1.0 - w)]


def accuracy_at(points: Sequence[dict[str, Any]], cost: str, budget: float) -> float | None:
  """The curve's accuracy at `budget` of `cost`, interpolated along its frontier (module docstring)."""
  x, y = frontier(points, cost)
  if budget < x[0] - 1e-12:
    return None
  return float(np.interp(budget, x, y))


def accuracy_at_speedup(points: Sequence[dict[str, Any]], speedup: float) -> float | None:
  """Accuracy at a matched measured speedup (at least `speedup` times faster than the full model)."""
  return accuracy_at(points, 'time_fraction', 1.0 / speedup)


def mean_accuracy(points: Sequence[dict[str, Any]], cost: str, lo: float, hi: float) -> float | None:
  """The area under the interpolated frontier between costs lo and hi, divided by hi - lo: the curve's mean
  accuracy over that range of budgets (None when the curve does not reach down to lo)."""
  if not lo < hi:
    raise ValueError(f'mean_accuracy needs lo < hi, got {lo} and {hi}.')
  x, y = frontier(points, cost)
  if lo < x[0] - 1e-12:
    return None
  grid = corners(x, lo, hi)
  return float(trapezoid_mean(grid, np.interp(grid, x, y)))


def corners(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """[M] lo, hi and the frontier costs x between them. The interpolant (and each example's expected correctness,
  experiments.paired) is linear between frontier points, so the trapezoid rule over these corners is exact."""
  return np.unique(np.concatenate([[lo, hi], x[(x > lo) & (x < hi)]]))


def trapezoid_mean(grid: np.ndarray, vals: np.ndarray) -> np.ndarray:
  """The mean over [grid[0], grid[-1]] of values [M, ...] known at grid [M] and linear in between: [...]."""
  widths = np.diff(grid).reshape(-1, *([1] * (vals.ndim - 1)))
  return np.sum((vals[1:] + vals[:-1]) / 2 * widths, axis=0) / (grid[-1] - grid[0])


def common_range(curves: Sequence[Sequence[dict[str, Any]]], cost: str, hi: float = 1.0) -> tuple[float, float]:
  """The cost range every curve covers: from the most expensive of their cheapest points to hi."""
  return max(frontier(c, cost)[0][0] for c in curves), hi


def budget_label(b: float) -> str:
  return '1/3' if abs(b - 1 / 3) < 1e-9 else f'{b:.3g}'
