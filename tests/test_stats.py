"""experiments/stats.py's paired tests against hand-computed cases: McNemar per seed and combined, the paired
bootstrap, Holm's rule, equivalence (TOST) against a margin, and a comparison the unpaired rule cannot decide
that the paired one does."""

import math

import numpy as np
import pytest

from experiments import stats


def _pair(both: int, only_a: int, only_b: int, neither: int, seed: int = 0):
  """Correctness of models a and b on the same examples with the given 2x2 counts, in a seeded random order."""
  a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
  b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
  order = np.random.default_rng(seed).permutation(len(a))
  return a[order], b[order]


def test_paired_decides_where_the_unpaired_rule_is_inconclusive():
  # 1,000 test examples: a right on 800, b on 770; they disagree on 50 (40 only a, 10 only b).
  a, b = _pair(760, 40, 10, 190)
  est, se, _ = stats.difference([0.80], [0.77], 1000)
  assert est == pytest.approx(0.03) and se == pytest.approx(math.sqrt(0.8 * 0.2 / 1000 + 0.77 * 0.23 / 1000))
  assert stats.verdict(est, se) == 'inconclusive within spread'  # 0.03 < 2 x 0.01836
  m = stats.mcnemar(a, b)
  # By hand: effect (40 - 10) / 1000; se sqrt(40 + 10 - 30^2 / 1000) / 1000; chi2 = 30^2 / 50 = 18, p = erfc(3).
  assert m.effect == pytest.approx(0.03) and m.se == pytest.approx(math.sqrt(49.1) / 1000)
  assert m.p == pytest.approx(math.erfc(3.0)) and m.p < 3e-5
  assert (m.examples, m.seeds) == (1000, 1)
  assert stats.judge([stats.Claim('a beats b', m)]) == ['holds']
  assert stats.judge([stats.Claim('b beats a', stats.mcnemar(b, a))]) == ['does not hold']
  boot = stats.paired_bootstrap(a, b, replicates=20_000, seed=1)
  assert boot.effect == pytest.approx(0.03) and boot.p == pytest.approx(2 / 20_001)  # no replicate at or below 0: the smallest p
  # The bootstrap's spread is the paired standard error computed independently by McNemar's formula.
  assert np.std(boot.replicates) == pytest.approx(m.se, rel=0.03)
  lo, hi = boot.interval()
  assert lo == pytest.approx(0.03 - 1.96 * m.se, abs=8e-4) and hi == pytest.approx(0.03 + 1.96 * m.se, abs=8e-4)
  again = stats.paired_bootstrap(a, b, replicates=20_000, seed=1)
  np.testing.assert_array_equal(again.replicates, boot.replicates)  # deterministic


def test_mcnemar_combines_seeds_and_goes_exact_when_few_disagree():
  a1, b1 = _pair(760, 40, 10, 190, seed=1)
  a2, b2 = _pair(760, 20, 30, 190, seed=2)
  m = stats.mcnemar(np.stack([a1, a2]), np.stack([b1, b2]))
  # Effect: mean of +0.03 and -0.01. se: sqrt(49.1 + 49.9) / 1000 / 2. Pooled: b = 60, c = 40, chi2 = 400 / 100.
  assert m.effect == pytest.approx(0.01) and m.se == pytest.approx(math.sqrt(99.0) / 2000)
  assert m.p == pytest.approx(math.erfc(math.sqrt(2.0))) and m.seeds == 2
  # 9 discordant examples (8 / 1): exact two-sided binomial, 2 * (C(9,0) + C(9,1)) / 2^9 = 20 / 512.
  a, b = _pair(50, 8, 1, 41)
  assert stats.mcnemar(a, b).p == pytest.approx(20 / 512)
  assert stats.mcnemar(a, a).p == 1.0 and stats.mcnemar(a, a).effect == 0.0
  with pytest.raises(ValueError, match='one shape'):
    stats.mcnemar(a, b[:-1])


def test_bootstrap_resamples_seeds_with_opposite_effects():
  # Two seeds with opposite effects (+0.03 and -0.03): the mean is 0 and the seed draw widens the interval well
  # beyond what example sampling alone gives (about +-0.014).
  a1, b1 = _pair(760, 40, 10, 190, seed=3)
  a2, b2 = _pair(760, 10, 40, 190, seed=4)
  boot = stats.paired_bootstrap(np.stack([a1, a2]), np.stack([b1, b2]), replicates=5_000)
  assert boot.effect == pytest.approx(0.0, abs=1e-12)
  lo, hi = boot.interval()
  assert lo < -0.025 and hi > 0.025 and boot.p > 0.5


def test_holm_by_hand():
  # Bonferroni (0.05 / 3) would reject 0.01 alone; Holm steps down: 0.01 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05.
  assert stats.holm([0.04, 0.01, 0.02]) == [True, True, True]
  # 0.03 > 0.05 / 2 stops the procedure: 0.04 is not rejected although 0.04 < 0.05.
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
  assert stats.holm([]) == []
  # The family decides: one claim at p = 0.02 holds alone, but not among five others at p = 0.5.
  m = stats.Paired(0.02, 0.02, 1000, 1, 'test', se=0.01)
  null = stats.Paired(0.0, 0.5, 1000, 1, 'test', se=0.01)
  assert stats.judge([stats.Claim('x', m)]) == ['holds']
  assert stats.judge([stats.Claim('x', m)] + [stats.Claim('y', null)] * 5)[0] == 'inconclusive'


def test_equivalence_against_a_margin_by_hand():
  z90 = 1.6448536269514722
  small = stats.Paired(0.005, 0.2, 1000, 3, 'normal', se=0.004)
  # 90% interval 0.005 +- 1.645 x 0.004 = (-0.0016, 0.0116): inside +-0.02, not inside +-0.01.
  assert small.interval(0.90) == pytest.approx((0.005 - z90 * 0.004, 0.005 + z90 * 0.004))
  inside = stats.Claim('equal within 2 points', small, 'within', -0.02, 0.02)
  # TOST p: the larger one-sided p, here Phi((0.005 - 0.02) / 0.004) = Phi(-3.75).
  assert inside.p() == pytest.approx(0.5 * math.erfc(3.75 / math.sqrt(2)))
  tight = stats.Claim('equal within 1 point', small, 'within', -0.01, 0.01)
  assert tight.p() == pytest.approx(0.5 * math.erfc(1.25 / math.sqrt(2)))
  # Non-inferiority: only an upper bound (a drop of at most 1 point).
  one_sided = stats.Claim('drop below 1 point', small, 'within', upper=0.01)
  assert one_sided.p() == pytest.approx(tight.p())
  big = stats.Claim('equal within 2 points', stats.Paired(0.05, 0.0, 1000, 3, 'normal', se=0.004), 'within',
                    -0.02, 0.02)
  assert stats.judge([inside]) == ['holds'] and stats.judge([tight]) == ['inconclusive']
  assert stats.judge([big]) == ['does not hold']
  with pytest.raises(ValueError, match='lower'):
    stats.Claim('bad', small, 'within', 0.02, -0.02)


def test_paired_sentence():
  m = stats.mcnemar(*_pair(760, 40, 10, 190))
  line = stats.paired_sentence(stats.Claim('a beats b', m), 'holds')
  assert line.startswith('- a beats b: **holds** (+3.0 points, 95% interval +1.6 to +4.4; McNemar, p = 2.2e-05;')
  assert line.endswith('n = 1000 x 1).')
