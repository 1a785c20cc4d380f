"""Numbers with their spread, and claims judged against it.

Two kinds of judgement. Paired tests (second half) read the per-example outputs a study stores beside each raw
run (runs/<cell>.predictions.npz): a paired bootstrap or McNemar's test per seed, equivalence against a stated
margin, and Holm's rule over a report's claims. Cells evaluated before predictions were stored carry only
their accuracies; for them the first half judges from summary numbers, conservatively:

Spread is the sample standard deviation over seeds (ddof=1). A claim's uncertainty is the standard error of
the estimate: the seed standard error where there are several seeds, combined in quadrature with the
binomial standard error of an accuracy on the eval set (every seed is scored on the same examples, so the
seeds' spread does not include the sampling of the eval set). With one seed only the binomial part remains,
and the sentence says it is a single run.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
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


# ------------------------------------------------------------------------- paired tests on stored predictions
#
# Every method is scored on the same test examples, so the difference of two accuracies is tested per example:
# the examples both get right or both get wrong cancel, and only the discordant ones carry the comparison. Adding
# the two accuracies' binomial errors in quadrature (difference() above) ignores that and overstates the error.
#
# The verdict rule (judge): each claim gets a p-value from its paired test; Holm's step-down procedure over all
# the claims of one report keeps the family-wise error rate (the chance that any claim judged 'holds' or 'does
# not hold' is wrong) at ALPHA, whatever the dependence between the claims. A claim not rejected is
# 'inconclusive'.

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Paired:
  """A paired comparison of two models' per-example correctness: effect = mean over seeds of accuracy(a) -
  accuracy(b); p: two-sided p-value of 'no difference'; either `replicates` (the bootstrap distribution of the
  effect) or `se` (a normal approximation) gives intervals; examples x seeds: the n the test saw."""
  effect: float
  p: float
  examples: int
  seeds: int
  test: str
  se: float | None = None
  replicates: np.ndarray | None = None

  def __post_init__(self):
    if (self.se is None) == (self.replicates is None):
      raise ValueError('Paired: give exactly one of se (normal approximation) and replicates (bootstrap).')

  def interval(self, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of the effect."""
    if self.replicates is not None:
      lo, hi = np.quantile(self.replicates, [(1 - level) / 2, (1 + level) / 2])
      return float(lo), float(hi)
    z = NormalDist().inv_cdf((1 + level) / 2)
    return self.effect - z * self.se, self.effect + z * self.se

  def p_beyond(self, bound: float, *, above: bool) -> float:
    """One-sided p-value of 'effect >= bound' (above=True) or 'effect <= bound' (above=False): small when the
    data say the effect lies on the other side of bound."""
    if self.replicates is not None:
      r = self.replicates
      return float((np.sum(r >= bound if above else r <= bound) + 1) / (len(r) + 1))
    z = (self.effect - bound) / self.se if self.se > 0 else math.copysign(math.inf, self.effect - bound)
    return NormalDist().cdf(z) if above else 1 - NormalDist().cdf(z)


def _paired_inputs(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
  """Both as float [seeds, N] (a fraction is an expected correctness, e.g. of an example at an interpolated
  budget, where a share of the runs answers it at each of two thresholds)."""
  a, b = np.atleast_2d(np.asarray(correct_a, np.float64)), np.atleast_2d(np.asarray(correct_b, np.float64))
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f'Paired tests need correctness arrays of one shape [seeds, examples]; got {a.shape} and '
                     f'{b.shape}.')
  return a, b


def paired_bootstrap(correct_a, correct_b, *, replicates: int = 10_000, seed: int = 0) -> Paired:
  """Paired bootstrap of the accuracy difference over examples within seeds.

  correct_a, correct_b: [seeds, N] (or [N]): whether (1/0, or the expected share) each model got each test
  example right, the same
  examples in the same order, row s of both from seed s. Each replicate draws N examples with replacement, one
  draw shared by all seeds (they score the same examples), and, with several seeds, the seeds with replacement
  too (training noise; with 3 seeds this part is coarse). Deterministic for a given seed."""
  a, b = _paired_inputs(correct_a, correct_b)
  d = a - b
  s, n = d.shape
  rng = np.random.default_rng(seed)
  out = []
  for size in [1000] * (replicates // 1000) + ([replicates % 1000] if replicates % 1000 else []):
    example_weights = rng.multinomial(n, np.full(n, 1 / n), size=size)  # [size, N] times each example is drawn
    per_seed = example_weights @ d.T / n  # [size, S]
    seed_weights = rng.multinomial(s, np.full(s, 1 / s), size=size) if s > 1 else np.ones((size, 1))
    out.append((per_seed * seed_weights).sum(1) / s)
  reps = np.concatenate(out)
  effect = float(d.mean())
  p = min(1.0, 2 * min((np.sum(reps <= 0) + 1) / (len(reps) + 1), (np.sum(reps >= 0) + 1) / (len(reps) + 1)))
  return Paired(effect, float(p), n, s, 'paired bootstrap', replicates=reps)


def mcnemar(correct_a, correct_b) -> Paired:
  """McNemar's test per seed, combined over seeds (the stratified, Mantel-Haenszel form).

  Per seed, b = examples only a gets right, c = only b gets right. The effect is the mean over seeds of
  (b - c) / N, with standard error sqrt(sum_s (b_s + c_s - (b_s - c_s)^2 / N) / N^2) / seeds. p: chi-squared
  (sum b - sum c)^2 / (sum b + sum c) with one degree of freedom, or, with fewer than 25 discordant examples in
  all, the exact binomial test of sum b among sum (b + c) at one half."""
  a, b_ = _paired_inputs(correct_a, correct_b)
  if not np.all(np.isin(a, (0, 1)) & np.isin(b_, (0, 1))):
    raise ValueError('McNemar needs right-or-wrong (0/1) outcomes; use paired_bootstrap for fractions.')
  a, b_ = a > 0, b_ > 0
  s, n = a.shape
  b = (a & ~b_).sum(1).astype(np.float64)
  c = (~a & b_).sum(1).astype(np.float64)
  effect = float(np.mean((b - c) / n))
  se = float(math.sqrt(np.sum((b + c - (b - c) ** 2 / n) / n ** 2)) / s)
  total_b, total_c = int(b.sum()), int(c.sum())
  m = total_b + total_c
  if m == 0:
    p = 1.0
  elif m < 25:
    tail = sum(math.comb(m, k) for k in range(min(total_b, total_c) + 1)) / 2 ** m
    p = min(1.0, 2 * tail)
  else:
    p = math.erfc(math.sqrt((total_b - total_c) ** 2 / m / 2))
  return Paired(effect, float(p), n, s, 'McNemar', se=se)


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
  """Holm's step-down rejections: sorted ascending, p_(i) is rejected while p_(i) <= alpha / (m - i)."""
  order = np.argsort(p_values, kind='stable')
  reject = [False] * len(p_values)
  for rank, i in enumerate(order):
    if p_values[i] > alpha / (len(p_values) - rank):
      break
    reject[i] = True
  return reject


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim on a paired result. kind 'greater': effect > 0 (a two-sided test; a rejection with a negative
  effect reads 'does not hold'); kind 'within': lower < effect < upper, an equivalence (TOST: both one-sided
  tests must reject) or, with one bound infinite, a non-inferiority claim against a stated margin."""
  text: str
  result: Paired
  kind: str = 'greater'
  lower: float = -math.inf
  upper: float = math.inf
  unit: str = ' points'  # of the effect x 100 in the sentence: ' points' (accuracy) or '%' (a relative drop)

  def __post_init__(self):
    if self.kind not in ('greater', 'within'):
      raise ValueError(f'Claim.kind must be greater or within, got {self.kind!r}.')
    if self.kind == 'within' and not self.lower < self.upper:
      raise ValueError(f'Claim {self.text!r}: lower {self.lower} must lie below upper {self.upper}.')

  def p(self) -> float:
    if self.kind == 'greater':
      return self.result.p
    # TOST: the larger of the two one-sided p-values (an infinite bound's test always rejects).
    ps = [self.result.p_beyond(self.lower, above=False) if math.isfinite(self.lower) else 0.0,
          self.result.p_beyond(self.upper, above=True) if math.isfinite(self.upper) else 0.0]
    return max(ps)


def judge(claims: Sequence[Claim], alpha: float = ALPHA) -> list[str]:
  """'holds' | 'does not hold' | 'inconclusive' per claim, Holm over the family (module comment above). A
  'within' claim whose TOST is not rejected 'does not hold' when its 1 - 2 alpha interval lies wholly outside
  the bounds (the data exclude it, unadjusted), else it is inconclusive."""
  reject = holm([c.p() for c in claims], alpha)
  out = []
  for c, r in zip(claims, reject):
    if c.kind == 'greater':
      out.append(('holds' if c.result.effect > 0 else 'does not hold') if r else 'inconclusive')
      continue
    lo, hi = c.result.interval(1 - 2 * alpha)
    out.append('holds' if r else 'does not hold' if hi < c.lower or lo > c.upper else 'inconclusive')
  return out


def paired_sentence(claim: Claim, verdict_: str, *, scale: float = 100.0) -> str:
  """'- <claim>: **holds** (+2.2 points, 95% interval +1.4 to +3.0; McNemar, p = 0.0001; n = 2114 x 3).' A
  'within' claim names its margin; its test (TOST) reads the 90% interval, the sentence shows the 95% one."""
  r, unit = claim.result, claim.unit
  lo, hi = r.interval(0.95)
  fmt = lambda v: f'{v * scale:+.1f}{unit}'
  bounds = '' if claim.kind == 'greater' else (
      f'; margin: below {fmt(claim.upper)}' if not math.isfinite(claim.lower) else
      f'; margin: above {fmt(claim.lower)}' if not math.isfinite(claim.upper) else
      f'; margin: {fmt(claim.lower)} to {fmt(claim.upper)}')
  return (f'- {claim.text}: **{verdict_}** ({fmt(r.effect)}, 95% interval {lo * scale:+.1f} to {hi * scale:+.1f}; {r.test}, '
          f'p = {claim.p():.2g}{bounds}; n = {r.examples} x {r.seeds}).')
