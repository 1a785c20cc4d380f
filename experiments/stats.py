"""Numbers with their spread, and claims judged against it (pure functions over lists of floats).

Spread is the sample standard deviation over seeds (ddof=1). A claim's uncertainty is the standard error of
the estimate: the seed standard error where there are several seeds, combined in quadrature with the
binomial standard error of an accuracy on the eval set (every seed is scored on the same examples, so the
seeds' spread does not include the sampling of the eval set). With one seed only the binomial part remains,
and the sentence says it is a single run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

Z = 2.0  # a claim holds (or fails) when the estimate is this many standard errors past its threshold


@dataclasses.dataclass(frozen=True)
class Spread:
  """mean, sample std (ddof=1; None for one value) and count of a list of per-seed values."""
  mean: float
  std: float | None
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> 'Spread':
    v = [float(x) for x in values if x is not None]
    if not v:
      raise ValueError('No values to summarise.')
    return cls(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v))

  def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
    """'0.812 ± 0.004' (or '0.812 (1 run)'); scale=100 writes percentages."""
    m = f'{self.mean * scale:.{digits}f}'
    return f'{m} (1 run)' if self.std is None else f'{m} ± {self.std * scale:.{digits}f}'

  def sem(self) -> float:
    """Standard error of the mean over seeds (0 for one value)."""
    return 0.0 if self.std is None else self.std / math.sqrt(self.n)


def binomial_se(accuracy: float, examples: int) -> float:
  """Standard error of an accuracy measured on `examples` independent examples."""
  if examples <= 0:
    raise ValueError(f'examples must be positive, got {examples}.')
  return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / examples)


def difference(a: Sequence[float], b: Sequence[float], examples: int) -> tuple[float, float, int]:
  """mean(a) - mean(b) and its standard error: paired by position (same seeds) when the lists have one
  length, else unpaired; plus the binomial error of both accuracies on `examples` eval examples (0: none).
  Returns (estimate, standard error, seeds)."""
  a, b = [float(x) for x in a], [float(x) for x in b]
  est = float(np.mean(a) - np.mean(b))
  if len(a) == len(b) and len(a) > 1:
    seed_se = Spread.of([x - y for x, y in zip(a, b)]).sem()
  else:
    seed_se = math.hypot(Spread.of(a).sem(), Spread.of(b).sem())
  binom = math.hypot(binomial_se(float(np.mean(a)), examples), binomial_se(float(np.mean(b)), examples)) \
      if examples else 0.0
  return est, math.hypot(seed_se, binom), min(len(a), len(b))


def verdict(estimate: float, se: float, threshold: float = 0.0) -> str:
  """The claim 'estimate > threshold': 'holds' when estimate - Z se > threshold, 'does not hold' when
  estimate + Z se < threshold, else 'inconclusive within spread'. (Claim 'x < t': verdict(-x, se, -t).)"""
  if estimate - Z * se > threshold:
    return 'holds'
  if estimate + Z * se < threshold:
    return 'does not hold'
  return 'inconclusive within spread'


def claim_sentence(claim: str, estimate: float, se: float, *, threshold: float = 0.0, seeds: int,
                   detail: str = '', scale: float = 1.0, unit: str = '') -> str:
  """'- <claim>: holds here (+2.2 ± 1.0 points ...; 3 seeds).' The estimate and its standard error are
  written beside the verdict, multiplied by scale (100: points or percent)."""
  v = verdict(estimate, se, threshold)
  here = {'holds': 'holds here', 'does not hold': 'does not hold here'}.get(v, v)
  runs = 'single run' if seeds == 1 else f'{seeds} seeds'
  extra = f'; {detail}' if detail else ''
  shown = round(estimate * scale, 1) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
  return (f'- {claim}: **{here}** (estimate {shown:+.1f}{unit} ± {se * scale:.1f}{unit} standard '
          f'error, threshold {threshold * scale:+.1f}{unit}; {runs}{extra}).')
