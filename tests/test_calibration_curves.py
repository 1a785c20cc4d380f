"""Temperature fitting (sweet_jax.calibration) and the offline sweep and cost model (sweet_jax.curves)."""

import math

import numpy as np
import pytest

from encoder_jax import EncoderConfig
from sweet_jax import calibration, curves, exits


# ----------------------------------------------------------------------------------------------- calibration

def test_fit_recovers_known_temperatures():
  """Labels drawn from softmax(base); exit e sees logits T_e * base, so its NLL-optimal temperature is T_e."""
  rng = np.random.default_rng(0)
  n, c = 20000, 5
  base = rng.normal(scale=1.5, size=(n, c))
  p = np.exp(base - base.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  labels = (p.cumsum(-1) > rng.random((n, 1))).argmax(-1)
  t_true = np.array([0.5, 1.0, 3.0])
  logits = t_true[:, None, None] * base[None]
  t_fit = calibration.fit_temperatures(logits, labels)
  assert t_fit.shape == (3,) and t_fit.dtype == np.float32
  np.testing.assert_allclose(t_fit, t_true, rtol=0.04)
  # It is the minimum: the NLL at the fit is below the NLL at the true temperature (same data).
  assert np.all(calibration.nll(logits, labels, t_fit) <= calibration.nll(logits, labels, t_true) + 1e-9)


def grid_nll(logits, labels, temperatures):
  """Mean NLL [T] of one exit's logits [N, C] at each temperature [T]: numpy, independent of calibration.nll."""
  z = logits[None] / temperatures[:, None, None]  # [T, N, C]
  m = z.max(-1, keepdims=True)
  log_p = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
  return -log_p[:, np.arange(len(labels)), labels].mean(-1)


def test_fit_minimises_nll_against_a_brute_force_grid():
  """On a grid of 4,001 temperatures over the search interval, no temperature has a lower NLL than the fit's,
  and the grid's best lies next to the fit: an interior minimum, one at each bound (always-right exit ->
  T at the lower bound; an exit that ranks the label last -> the upper bound)."""
  rng = np.random.default_rng(1)
  n, c = 60, 3
  labels = rng.integers(0, c, n)
  noisy = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]  # informative but overconfident when scaled
  right = np.eye(c)[labels] * 3.0  # the label always wins: NLL keeps falling as T -> 0
  wrong = -right  # the label always loses: NLL keeps falling as T -> infinity
  logits = np.stack([4.0 * noisy, right, wrong])
  lo, hi = 0.1, 10.0
  fit = calibration.fit_temperatures(logits, labels, min_temperature=lo, max_temperature=hi)
  grid = np.exp(np.linspace(np.log(lo), np.log(hi), 4001))
  step = np.log(grid[1] / grid[0])
  for e in range(3):
    values = grid_nll(logits[e], labels, grid)
    at_fit = grid_nll(logits[e], labels, np.array([float(fit[e])]))[0]
    assert at_fit <= values.min() + 1e-6, (e, fit[e], grid[values.argmin()])
    assert abs(np.log(fit[e]) - np.log(grid[values.argmin()])) <= step, (e, fit[e], grid[values.argmin()])
  assert lo * 1.5 < fit[0] < hi / 1.5  # the first exit's minimum is interior: the search found it
  assert fit[1] == pytest.approx(lo, rel=1e-5) and fit[2] == pytest.approx(hi, rel=1e-5)


def test_nll_by_hand():
  logits = np.array([[[2.0, 0.0], [0.0, 1.0]]])
  labels = np.array([0, 0])
  expected = np.mean([-math.log(math.exp(1) / (math.exp(1) + 1)), -math.log(1 / (1 + math.exp(0.5)))])
  np.testing.assert_allclose(calibration.nll(logits, labels, [2.0]), [expected], rtol=1e-12)


def test_fit_rejects_bad_shapes():
  with pytest.raises(ValueError, match='exits, examples, classes'):
    calibration.fit_temperatures(np.zeros((4, 3)), np.zeros(4, int))
  with pytest.raises(ValueError, match='labels'):
    calibration.fit_temperatures(np.zeros((1, 4, 3)), np.zeros(5, int))


# ----------------------------------------------------------------------------------------------- rules

TINY = EncoderConfig(vocab_size=11, hidden_size=6, num_layers=4, num_heads=2, intermediate_size=7,
                     max_position_embeddings=13)
TINY_EXITS = exits.ExitConfig((1, 2, 4), 3)


def tiny_logits(seed=0, n=17):
  return np.random.default_rng(seed).normal(scale=3.0, size=(3, n, 3)).astype(np.float32)


def run(logits, threshold, rule='confidence', temps=(1.0, 1.0, 1.0)):
  e, p = curves.assign_exits(logits, np.asarray(temps, np.float32), threshold, rule=rule)
  return np.asarray(e), np.asarray(p)


@pytest.mark.parametrize('rule,first,last', [('confidence', 0.0, 1.01), ('entropy', 10.0, -1.0),
                                             ('patience', 1, 4)])
def test_edge_thresholds_send_everyone_first_or_last(rule, first, last):
  logits = tiny_logits()
  e, p = run(logits, first, rule)
  np.testing.assert_array_equal(e, 0)
  np.testing.assert_array_equal(p, logits[0].argmax(-1))
  e, p = run(logits, last, rule)
  np.testing.assert_array_equal(e, 2)  # the last exit always answers
  np.testing.assert_array_equal(p, logits[2].argmax(-1))


def test_confidence_rule_with_temperatures_by_hand():
  # One example, two classes: exit 0 logits (2, 0), exit 1 (0, 4), exit 2 (1, 0).
  logits = np.array([[[2.0, 0.0]], [[0.0, 4.0]], [[1.0, 0.0]]], np.float32)
  conf0 = 1 / (1 + math.exp(-2.0))  # 0.881 at T = 1
  conf0_t = 1 / (1 + math.exp(-2.0 / 4))  # 0.622 at T = 4
  e, p = run(logits, 0.85)
  assert (e[0], p[0]) == (0, 0)
  e, p = run(logits, 0.85, temps=(4.0, 1.0, 1.0))  # a hotter exit 0 is no longer sure enough
  assert conf0_t < 0.85 < conf0 and (e[0], p[0]) == (1, 1)
  e, p = run(logits, 0.99)  # exit 1 is 0.982 sure: not enough, and the last exit answers
  assert (e[0], p[0]) == (2, 0)


def test_entropy_rule_by_hand():
  logits = np.array([[[0.0, 0.0]], [[3.0, 0.0]], [[0.0, 1.0]]], np.float32)
  p1 = 1 / (1 + math.exp(-3.0))
  h1 = -(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1))  # 0.181 nats
  e, _ = run(logits, math.log(2) - 1e-3, 'entropy')  # exit 0 is uniform: entropy log 2
  assert e[0] == 1
  e, _ = run(logits, h1 - 1e-3, 'entropy')
  assert e[0] == 2


def test_patience_rule_counts_consecutive_agreeing_exits():
  # Predictions per exit for 3 examples: (0, 0, 1), (1, 0, 0), (2, 2, 2); 4 exits (the last forced).
  preds = np.array([[0, 1, 2], [0, 0, 2], [1, 0, 2], [1, 1, 1]])
  logits = np.eye(3, dtype=np.float32)[preds] * 5.0  # [E=4, N=3, C=3]
  e, p = run(logits, 2, 'patience', temps=(1.0,) * 4)
  np.testing.assert_array_equal(e, [1, 2, 1])  # example 1: 1, 0, 0 -> agrees from exit 2 on
  np.testing.assert_array_equal(p, [0, 0, 2])
  e, _ = run(logits, 3, 'patience', temps=(1.0,) * 4)
  np.testing.assert_array_equal(e, [3, 3, 2])


def test_default_thresholds():
  np.testing.assert_allclose(curves.default_thresholds('confidence', 3, 4), np.linspace(1 / 3, 1, 11))
  assert len(curves.default_thresholds('confidence', 3, 4)) == 11
  np.testing.assert_allclose(curves.default_thresholds('entropy', 4, 4), np.linspace(math.log(4), 0, 11))
  assert curves.default_thresholds('patience', 3, 4) == [1, 2, 3, 4]
  with pytest.raises(ValueError, match='Unknown exit rule'):
    curves.default_thresholds('vibes', 3, 4)


# ----------------------------------------------------------------------------------------------- sweep

def test_sweep_points():
  logits = tiny_logits(3, n=29)
  labels = logits[2].argmax(-1)
  points = curves.sweep(logits, labels, temperatures=np.ones(3), encoder_config=TINY, exit_config=TINY_EXITS,
                        method='sweet', seq_lengths=5)
  assert len(points) == 11 and points[0].threshold == pytest.approx(1 / 3) and points[-1].threshold == 1.0
  first, last = points[0], points[-1]
  assert first.exit_counts == [29, 0, 0] and first.layer_fraction == pytest.approx(1 / 4)
  assert first.accuracy == pytest.approx((logits[0].argmax(-1) == labels).mean())
  assert last.exit_counts[2] >= 1 and sum(last.exit_counts) == 29
  for pt in points:
    layers = np.array([1, 2, 4])[pt.exit_index]
    assert pt.layer_fraction == pytest.approx(layers.sum() / (29 * 4))
    assert pt.accuracy == pytest.approx((pt.predictions == labels).mean())
    assert set(pt.summary()) == {'threshold', 'accuracy', 'layer_fraction', 'flops_fraction', 'exit_counts'}
  # Raising the threshold never makes the model faster.
  assert all(a.layer_fraction <= b.layer_fraction + 1e-12 for a, b in zip(points, points[1:]))


def test_multi_model_layer_fraction_is_cumulative():
  frac, _ = curves.cost_fractions(np.array([0, 1, 2, 2]), encoder_config=TINY, exit_config=TINY_EXITS,
                                  method='multi_model', seq_lengths=5)
  assert frac == pytest.approx((1 + 3 + 7 + 7) / (4 * 4))


# ----------------------------------------------------------------------------------------------- FLOPs by hand

BERT = EncoderConfig()  # bert-base: 12 x 768, 12 heads of 64, 3072
BERT_EXITS = exits.ExitConfig((1, 4, 6, 12), 3, pooling='cls')
H, NH, D, I, L, C, E5 = 768, 12, 64, 3072, 128, 3, 5  # E5: the FLOPs per element of a norm or nonlinearity


def bert_layer_by_hand():
  qkv = 3 * (2 * L * H * H + L * H)  # three projections with bias
  scores = NH * (2 * L * L * D + E5 * L * L)  # Q K^T and softmax per head
  mix = NH * 2 * L * L * D  # probabilities @ values
  out = (2 * L * H * H + L * H) + L * H + E5 * L * H  # projection, residual, layer norm
  ffn = (2 * L * H * I + L * I) + E5 * L * I + (2 * L * I * H + L * H) + L * H + E5 * L * H
  return qkv + scores + mix + out + ffn


EMB = 2 * L * H + E5 * L * H  # add three embeddings, layer norm
HEAD = (2 * H * H + H) + E5 * H + (2 * H * C + C)  # [CLS] pooling is free; pooler dense + tanh; classifier


def test_bert_base_layer_flops_by_hand():
  assert curves.layer_flops(BERT, 0, L) == bert_layer_by_hand()
  # Sanity: ~ 2 x 128 tokens x 7.1M weights per layer, plus attention.
  assert 1.8e9 < bert_layer_by_hand() < 2.0e9


def test_bert_base_flops_fraction_by_hand():
  layer = bert_layer_by_hand()
  full = EMB + 12 * layer + HEAD
  exit_index = np.array([0, 0, 0, 1, 1, 2, 3, 3])
  depth = {0: 1, 1: 4, 2: 6, 3: 12}
  # Early exit: embeddings, the layers below the exit, every head passed on the way.
  spent = sum(EMB + depth[i] * layer + (i + 1) * HEAD for i in exit_index)
  layer_frac, flops_frac = curves.cost_fractions(exit_index, encoder_config=BERT, exit_config=BERT_EXITS,
                                                 method='sweet', seq_lengths=L)
  assert layer_frac == pytest.approx((1 + 1 + 1 + 4 + 4 + 6 + 12 + 12) / (8 * 12))
  assert flops_frac == pytest.approx(spent / (8 * full), rel=1e-12)
  # Multi-model: members 0..i each re-encode from the embeddings with their own head.
  member = {i: EMB + depth[i] * layer + HEAD for i in depth}
  spent_mm = sum(sum(member[j] for j in range(i + 1)) for i in exit_index)
  _, flops_mm = curves.cost_fractions(exit_index, encoder_config=BERT, exit_config=BERT_EXITS,
                                      method='multi_model', seq_lengths=L)
  assert flops_mm == pytest.approx(spent_mm / (8 * full), rel=1e-12)
  # The worst case of the cascade costs 23 layers' worth: ~1.92x the full model.
  _, worst = curves.cost_fractions(np.array([3]), encoder_config=BERT, exit_config=BERT_EXITS,
                                   method='multi_model', seq_lengths=L)
  assert worst == pytest.approx((4 * EMB + 23 * layer + 4 * HEAD) / full, rel=1e-12)
  assert 1.9 < worst < 1.93


def test_constant_heads_skip_queries_keys_and_scores():
  cfg = BERT.with_heads('constant', [(0, h) for h in range(NH)])
  by_hand = ((2 * L * H * H + L * H)  # values only
             + NH * (2 * L * L + E5 * L * D)  # each row's mass over real keys; mask values, renormalise
             + NH * 2 * L * L * D
             + (2 * L * H * H + L * H) + L * H + E5 * L * H
             + (2 * L * H * I + L * I) + E5 * L * I + (2 * L * I * H + L * H) + L * H + E5 * L * H)
  assert curves.layer_flops(cfg, 0, L) == by_hand
  assert curves.layer_flops(cfg, 1, L) == bert_layer_by_hand()


def test_mean_pooling_head_flops_and_per_example_lengths():
  ecfg = exits.ExitConfig((1, 4, 6, 12), 3, pooling='mean')
  assert curves.head_flops(BERT, ecfg, L) == HEAD + 2 * L * H + H
  # Per-example lengths: the fraction weighs each example by its own cost.
  idx = np.array([0, 3])
  _, frac = curves.cost_fractions(idx, encoder_config=BERT, exit_config=BERT_EXITS, method='sweet',
                                  seq_lengths=np.array([64, 128]))
  costs = lambda s: curves.exit_costs(BERT, BERT_EXITS, 'sweet', s)
  expected = (costs(64)[0] + costs(128)[3]) / (curves.full_model_flops(BERT, BERT_EXITS, 64)
                                               + curves.full_model_flops(BERT, BERT_EXITS, 128))
  assert frac == pytest.approx(expected)
