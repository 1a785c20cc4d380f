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
PerExample = Callable[[Predictions], np.ndarray]  # one run's outputs -> float [N] correctness (or its share)


def predictions_of(run: dict[str, Any]) -> Predictions | None:
  path = run.get('attachments', {}).get(SUFFIX)
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
  return np.stack([per_example(p) for p in preds]), hashes.pop()


def exit_correct(exit_index: int) -> PerExample:
  return lambda p: p.correct()[exit_index].astype(np.float64)


def mean_over_exits(p: Predictions) -> np.ndarray:
  """Share of the exits that answer each example correctly: float [N] (its mean is the exits' mean accuracy)."""
  return p.correct().mean(0)


def at_budget(budget: float, cost: str = 'layer_fraction') -> PerExample:
  """Expected correctness at `budget` of `cost` on the dense offline sweep (101 thresholds), mixing the two
  frontier thresholds as budgets.accuracy_at does. A run whose sweep does not reach that cheap gives NaN."""
  def fn(p: Predictions) -> np.ndarray:
    curve = dense_curve(p)
    mix = budgets.mixture(curve, cost, budget)
    if mix is None:
      return np.full(len(p.labels), np.nan)
    return sum(w * correct_at(p, curve[i]['threshold']) for i, w in mix)
  return fn


def claim(text: str, a_runs: Sequence[dict[str, Any]], b_runs: Sequence[dict[str, Any]],
          per_example: PerExample, **kw) -> stats.Claim | None:
  """'a is more accurate than b' as a paired claim over examples and seeds (a_runs[i] and b_runs[i] share a
  seed); None when some run lacks stored outputs or a budget its sweep does not reach."""
  a, b = correctness(a_runs, per_example), correctness(b_runs, per_example)
  if a is None or b is None or np.isnan(a[0]).any() or np.isnan(b[0]).any():
    return None
  if a[1] != b[1]:
    raise ValueError('The runs compared were scored on different test sets.')
  return stats.Claim(text, stats.paired_bootstrap(a[0], b[0]), **kw)


def render(items: Sequence[str | stats.Claim], alpha: float = stats.ALPHA) -> list[str]:
  """The report's claim lines: the paired claims judged together (Holm over all of them: the family-wise error
  rate of their verdicts is at most alpha), sentences as they are, in the given order."""
  paired = [c for c in items if isinstance(c, stats.Claim)]
  verdicts = dict(zip(map(id, paired), stats.judge(paired, alpha)))
  return [stats.paired_sentence(c, verdicts[id(c)]) if isinstance(c, stats.Claim) else c for c in items]
