"""Claims between runs scored on the same test set, tested paired on their stored per-example outputs
(runs/<cell>.predictions.npz, drivers.predictions) when every run compared has them; a study's claim list mixes
these (stats.Claim, judged together under Holm's rule by render) with sentences judged from summary numbers
(stats.claim_sentence) for runs evaluated before outputs were stored.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from drivers.predictions import Predictions, correct_at, dense_curve
from experiments import budgets, stats

SUFFIX = '.predictions.npz'
# One run's outputs and its raw record -> float [N] correctness (or its share); the record carries what the
# outputs do not, such as the timed curve.
PerExample = Callable[[Predictions, dict[str, Any]], np.ndarray]


def outputs_path(run: dict[str, Any]) -> str | None:
  """The path of a loaded run's stored per-example outputs (common.load_runs attaches it); None without them."""
  return run.get('attachments', {}).get(SUFFIX)


def predictions_of(run: dict[str, Any]) -> Predictions | None:
  path = outputs_path(run)
  return Predictions.load(path) if path else None


def correctness(runs: Sequence[dict[str, Any]], per_example: PerExample) -> tuple[np.ndarray, str] | None:
  """[seeds, N] per-example correctness of the runs (seed order) and their test set's hash; None when a run has
  no stored outputs. Raises when the runs were scored on different test sets."""
  preds = [predictions_of(r) for r in runs]
  if not preds or any(p is None for p in preds):
    return None
  hashes = {p.test_sha256 for p in preds}
  if len(hashes) != 1:
    raise ValueError(f'Runs {[r["cell"] for r in runs]} were scored on different test sets: {sorted(hashes)}.')
  return np.stack([per_example(p, r) for p, r in zip(preds, runs)]), hashes.pop()


def exit_correct(exit_index: int) -> PerExample:
  return lambda p, run: p.correct()[exit_index].astype(np.float64)


def mean_over_exits(p: Predictions, run: dict[str, Any]) -> np.ndarray:
  """Share of the exits that answer each example correctly: float [N] (its mean is the exits' mean accuracy)."""
  return p.correct().mean(0)


def _mixed(p: Predictions, curve: Sequence[dict[str, Any]], cost: str, budget: float) -> np.ndarray:
  """Expected correctness [N] at `budget` of `cost` along `curve`, mixing its two frontier thresholds as
  budgets.accuracy_at does (its mean is that accuracy); NaN where the curve does not reach that cheap."""
  mix = budgets.mixture(curve, cost, budget)
  if mix is None:
    return np.full(len(p.labels), np.nan)
  return sum(w * correct_at(p, curve[i]['threshold']) for i, w in mix)


def at_budget(budget: float, cost: str = 'layer_fraction') -> PerExample:
  """Expected correctness at `budget` of `cost` on the dense offline sweep (101 thresholds)."""
  return lambda p, run: _mixed(p, dense_curve(p), cost, budget)


def over_range(lo: float, hi: float, cost: str = 'layer_fraction') -> PerExample:
  """Expected correctness averaged over the budgets lo..hi of `cost` on the dense offline sweep: float [N], whose
  mean is budgets.mean_accuracy over that range (the area under the curve over hi - lo); NaN where the sweep does
  not reach down to lo."""
  def fn(p: Predictions, run: dict[str, Any]) -> np.ndarray:
    curve = dense_curve(p)
    grid = budgets.corners(budgets.frontier(curve, cost)[0], lo, hi)
    return budgets.trapezoid_mean(grid, np.stack([_mixed(p, curve, cost, b) for b in grid]))
  return fn


def at_speedup(speedup: float) -> PerExample:
  """Expected correctness at a matched measured `speedup`: the run's timed curve (its evaluated thresholds, the
  only ones timed) mixed at 1 / speedup of the full model's time, each example answered as the stored outputs
  answer it at those thresholds. The interval covers the test examples, not the timing's own noise."""
  def fn(p: Predictions, run: dict[str, Any]) -> np.ndarray:
    curve = run['curve']['points']
    # The engine's answers are the offline rule's (tests/test_sweet_papa.py): the stored outputs must score
    # each timed point's accuracy to the example, or they are not the outputs that were timed.
    for point in curve:
      scored = correct_at(p, point['threshold']).mean()
      if abs(scored - point['accuracy']) > 0.5 / len(p.labels):
        raise ValueError(f'{run["cell"]}: the stored outputs score {scored:.4f} at threshold '
                         f'{point["threshold"]}, its timed curve {point["accuracy"]:.4f}.')
    return _mixed(p, curve, 'time_fraction', 1.0 / speedup)
  return fn


def with_outputs(*groups: Sequence[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], str]:
  """The groups (paired by position: groups[g][i] share a seed) cut to the positions where every group's run has
  stored outputs, and a note naming the seeds kept when that is fewer than all ('' otherwise). Cells evaluated
  before outputs were stored are re-evaluated a seed at a time; until every seed is, a claim is tested paired
  on the seeds that are, and says so, rather than falling back to the summary rule on all of them."""
  keep = [i for i in range(len(groups[0])) if all(predictions_of(g[i]) is not None for g in groups)]
  kept = [[g[i] for i in keep] for g in groups]
  if not keep or len(keep) == len(groups[0]):
    return kept, ''
  seeds = ', '.join(str(groups[0][i]['labels']['seed']) for i in keep)
  return kept, f' [paired on seed{"s" * (len(keep) > 1)} {seeds}, of {len(groups[0])}: the others have no stored outputs]'


def claim(text: str, a_runs: Sequence[dict[str, Any]], b_runs: Sequence[dict[str, Any]],
          per_example: PerExample, **kw) -> stats.Claim | None:
  """'a is more accurate than b' as a paired claim over examples and the seeds whose runs have stored outputs
  (a_runs[i] and b_runs[i] share a seed; with_outputs); None when no seed has them for both, or a run's sweep
  does not reach a budget."""
  (a_runs, b_runs), note = with_outputs(a_runs, b_runs)
  a, b = correctness(a_runs, per_example), correctness(b_runs, per_example)
  if a is None or b is None or np.isnan(a[0]).any() or np.isnan(b[0]).any():
    return None
  if a[1] != b[1]:
    raise ValueError('The runs compared were scored on different test sets.')
  return stats.Claim(text + note, stats.paired_bootstrap(a[0], b[0]), **kw)


def render(items: Sequence[str | stats.Claim], alpha: float = stats.ALPHA) -> list[str]:
  """The report's claim lines: the paired claims judged together (Holm over all of them: the family-wise error
  rate of their verdicts is at most alpha), sentences as they are, in the given order."""
  paired = [c for c in items if isinstance(c, stats.Claim)]
  verdicts = dict(zip(map(id, paired), stats.judge(paired, alpha)))
  return [stats.paired_sentence(c, verdicts[id(c)]) if isinstance(c, stats.Claim) else c for c in items]
