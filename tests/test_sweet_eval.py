"""sweet_eval on the small exit models of tests/adaptive_models.py: the files it writes, the curve it measures,
the errors it raises when the engine disagrees with the offline sweep, and the budget table."""

import numpy as np
import pytest

from sweet_jax import adaptive, curves, exits
from tests.adaptive_models import CFG, ECFG, S


def encode(texts_a, texts_b=None):
  """A character tokenizer for sweet_eval: int32 [rows, S], one id per character."""
  del texts_b  # single sentences
  ids = np.zeros((len(texts_a), S), np.int32)
  for i, t in enumerate(texts_a):
    codes = [1 + ord(c) % (CFG.vocab_size - 1) for c in t][:S]
    ids[i, :len(codes)] = codes
  return {'input_ids': ids, 'attention_mask': (ids > 0).astype(np.int32), 'token_type_ids': np.zeros_like(ids)}


def test_sweet_eval_writes_curve_files(models, tmp_path, caplog, monkeypatch):
  import json
  import ml_collections
  from drivers import sweet_eval
  from pipeline import data

  rng = np.random.default_rng(5)
  words = ['good', 'bad', 'film', 'plot', 'dull', 'fun']

  def dataset(n):
    texts = tuple(' '.join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(n))
    return data.TextDataset((texts,), rng.integers(0, 3, n), ('a', 'b', 'c'))

  # Thresholds 0 and 2 send everything to the first and the last exit; between them a grid over the calibrated
  # confidences of these heads (about 0.33-0.45), where some threshold splits the examples between exits.
  grid = tuple(np.round(np.linspace(0.3, 0.5, 21), 3).tolist())
  config = ml_collections.ConfigDict({'eval': {'batch_size': 2, 'thresholds': (0.0,) + grid + (2.0,),
                                               'rule': 'confidence', 'timing_examples': 6, 'timing_repeats': 1}})
  splits = data.Splits(dataset(10), dataset(12), dataset(7))
  from sweet_jax import calibration
  fits, real_fit = [], calibration.fit_temperatures
  monkeypatch.setattr(calibration, 'fit_temperatures', lambda z, y, **kw: fits.append((z, y)) or real_fit(z, y, **kw))
  out = sweet_eval.evaluate(config, str(tmp_path / 'a'), method='sweet', encoder_config=CFG, exit_config=ECFG,
                            params=models['sweet'], splits=splits, encode_fn=encode)
  curve = json.loads((tmp_path / 'a' / 'eval' / 'curve.json').read_text())
  assert curve['batch_size'] == 2 and curve['method'] == 'sweet' and len(curve['points']) == 23
  first, last = curve['points'][0], curve['points'][-1]
  assert first['exit_counts'] == [7, 0, 0] and last['exit_counts'] == [0, 0, 7]
  assert last['layer_fraction'] == 1.0 and first['flops_fraction'] < 0.5
  assert all(p['engine_agreement'] == 1.0 and p['measured_speedup'] > 0 for p in curve['points'])
  # The 6 timed examples are 3 batches of 2: one chunk of the device-scheduled engine, one read of its answers.
  assert curve['engine'] == 'stream' and all(p['engine_ties'] == 0 for p in curve['points'])
  assert all(p['host_round_trips_per_1000'] == pytest.approx(1000 / 6) for p in curve['points'])
  # Temperatures are fit once, on the 12 calibration examples alone (their labels, their logits), never on the
  # 10 train or 7 eval ones; that the splits are disjoint is pipeline.data's (test_data's splits tests).
  info = json.loads((tmp_path / 'a' / 'eval' / 'temperatures.json').read_text())
  assert info['calibrated'] and info['calibration_examples'] == 12
  (cal_logits, cal_labels), = fits
  np.testing.assert_array_equal(cal_labels, splits.calibration.labels)
  expected = exits.forward(CFG, ECFG, models['sweet'], encode(splits.calibration.texts[0]), stop_gradient=False)
  np.testing.assert_allclose(cal_logits, np.asarray(expected), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(info['temperatures'], real_fit(cal_logits, cal_labels), rtol=1e-6)
  # measured_speedup times the first 6 of the 7 eval examples; timed_flops_fraction is the FLOPs fraction of
  # exactly those 6, recomputed here from their logits and the per-exit costs (all at the padded length S).
  temps = json.loads((tmp_path / 'a' / 'eval' / 'temperatures.json').read_text())['temperatures']
  logits = exits.forward(CFG, ECFG, models['sweet'], encode(list(splits.eval.texts[0][:6])), stop_gradient=False)
  cost = curves.exit_costs(CFG, ECFG, 'sweet', S) / curves.full_model_flops(CFG, ECFG, S)
  for p in curve['points']:
    timed_exits = np.asarray(curves.assign_exits(logits, temps, p['threshold'])[0])
    assert p['timed_flops_fraction'] == pytest.approx(cost[timed_exits].mean(), rel=1e-9)
  assert first['timed_flops_fraction'] == pytest.approx(cost[0])
  assert last['timed_flops_fraction'] == pytest.approx(cost[2])
  # The 7th, untimed example changes some point's fraction: there the two figures differ.
  assert any(p['timed_flops_fraction'] != pytest.approx(p['flops_fraction']) for p in curve['points'])
  assert len(out['per_exit_accuracy']) == 3
  for name in ('per_exit_accuracy.json', 'curve.csv', 'curve.png'):
    assert (tmp_path / 'a' / 'eval' / name).exists()
  # No calibration split: temperatures stay 1, loudly.
  uncalibrated = data.Splits(splits.train, None, splits.eval)
  sweet_eval.evaluate(config, str(tmp_path / 'b'), method='sweet', encoder_config=CFG, exit_config=ECFG,
                      params=models['sweet'], splits=uncalibrated, encode_fn=encode)
  temps = json.loads((tmp_path / 'b' / 'eval' / 'temperatures.json').read_text())
  assert temps == {'temperatures': [1.0, 1.0, 1.0], 'calibrated': False, 'calibration_examples': 0}
  assert 'NOT fit' in caplog.text
  sweet_eval.compare([str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'cmp.png'))
  assert (tmp_path / 'cmp.png').stat().st_size > 10_000
  table = (tmp_path / 'cmp.md').read_text().splitlines()
  assert len(table) == 4 and table[2].startswith('| a [sweet] |') and table[3].startswith('| b [sweet] |')


def test_sweet_eval_fails_on_an_unanswered_or_wrong_example(models, tmp_path, monkeypatch):
  import ml_collections
  from drivers import sweet_eval
  from pipeline import data

  rng = np.random.default_rng(6)
  texts = tuple(''.join(rng.choice(list('abcdefgh'), size=rng.integers(2, 6))) for _ in range(5))
  splits = data.Splits(data.TextDataset((texts,), rng.integers(0, 3, 5), ('a', 'b', 'c')), None,
                       data.TextDataset((texts,), rng.integers(0, 3, 5), ('a', 'b', 'c')))

  run = adaptive.AdaptiveEngine.run

  def losing_run(self, batches, threshold, **kw):  # the engine forgets example 3 (as the 4-exit flush did)
    result = run(self, batches, threshold, **kw)
    result.exit_index[3] = -1
    return result

  monkeypatch.setattr(adaptive.AdaptiveEngine, 'run', losing_run)
  config = ml_collections.ConfigDict({'eval': {'batch_size': 2, 'thresholds': (0.6,), 'timing_examples': 0,
                                               'timing_repeats': 1}})
  with pytest.raises(RuntimeError, match=r'threshold 0.6 the adaptive engine did not answer 1 of 5'):
    sweet_eval.evaluate(config, str(tmp_path), method='sweet', encoder_config=CFG, exit_config=ECFG,
                        params=models['sweet'], splits=splits, encode_fn=encode)
  # Directly: a wrong exit, a wrong prediction, an answered padding row.
  real = np.array([True, True, True, False])
  want_exit, want_pred = np.array([0, 2, 1]), np.array([1, 1, 0])
  ok = adaptive.Result(np.array([1, 1, 0, -1]), np.array([0, 2, 1, -1]), {})
  sweet_eval.check_engine(ok, real, want_exit, want_pred, 0.5)
  for field, row, value, message in [('exit_index', 1, 1, 'disagree on 1 of 3'), ('predictions', 2, 2, 'disagree'),
                                     ('exit_index', 3, 0, 'padding rows')]:
    bad = adaptive.Result(ok.predictions.copy(), ok.exit_index.copy(), {})
    getattr(bad, field)[row] = value
    with pytest.raises(RuntimeError, match=f'threshold 0.5 .*{message}'):
      sweet_eval.check_engine(bad, real, want_exit, want_pred, 0.5)


def test_budget_table_takes_the_best_point_within_each_budget():
  from drivers import sweet_eval
  points = [{'accuracy': 0.70, 'layer_fraction': 0.2, 'measured_speedup': 4.5},
            {'accuracy': 0.80, 'layer_fraction': 0.5, 'measured_speedup': 1.8},
            {'accuracy': 0.79, 'layer_fraction': 1.0, 'measured_speedup': 1.0}]
  best = lambda key, bound, ge: sweet_eval.best_accuracy(points, key, bound, at_least=ge)
  assert best('layer_fraction', 0.25, False) == 0.70
  assert best('layer_fraction', 0.5, False) == 0.80  # the budget includes its bound
  assert best('layer_fraction', 1.0, False) == 0.80  # a cheaper point beats the full model here
  assert best('layer_fraction', 0.1, False) is None
  assert best('measured_speedup', 2.0, True) == 0.70 and best('measured_speedup', 5.0, True) is None
  row = sweet_eval.budget_table([('x', {'points': points})]).splitlines()[2]
  assert row == '| x | 0.700 | 0.700 | 0.800 | 0.800 | 0.800 | 0.700 | 0.700 | 0.700 | 0.800 |'


def test_ties_within_the_tolerance_are_counted_and_real_disagreements_stop_eval(models, tmp_path, monkeypatch):
  """The engine's temperatures scaled by 1 + 1e-4 (a rounding-size change of its calibrated logits): examples
  whose confidence sits on a threshold flip, are counted as engine_ties, and eval completes. Scaled by 3 (a
  real disagreement), eval stops naming an example that is not borderline."""
  import json
  import ml_collections
  from drivers import sweet_eval
  from pipeline import data

  rng = np.random.default_rng(8)
  texts = tuple(''.join(rng.choice(list('abcdefghij'), size=rng.integers(2, 7))) for _ in range(14))
  labels = rng.integers(0, 3, 14)
  splits = data.Splits(data.TextDataset((texts,), labels, ('a', 'b', 'c')), None,
                       data.TextDataset((texts,), labels, ('a', 'b', 'c')))
  forward = sweet_eval.forward_fn('sweet', CFG, ECFG, None)
  logits, _, _ = sweet_eval.all_exit_logits(forward, models['sweet'],
                                            sweet_eval.tokenized_batches(splits.eval, encode, 2))
  ones = np.ones(3, np.float32)
  z = np.asarray(logits, np.float64)
  p0 = np.exp(z[0] - z[0].max(-1, keepdims=True))
  p0 = (p0 / p0.sum(-1, keepdims=True)).max(-1)
  # Thresholds a hair (1e-6, above float32 rounding of a probability) below three examples' first-exit
  # confidences: the sweep lets them leave there; the engine, with slightly warmer temperatures, does not.
  thresholds = tuple(float(p0[k] - 1e-6) for k in np.argsort(p0)[[4, 7, 10]])
  config = ml_collections.ConfigDict({'eval': {'batch_size': 2, 'thresholds': thresholds, 'timing_examples': 0,
                                               'timing_repeats': 1, 'tie_tolerance': 1e-2}})
  init = adaptive.AdaptiveEngine.__init__

  def run(scale, workdir):
    def warmer(self, *args, temperatures=None, **kw):
      init(self, *args, temperatures=np.asarray(temperatures) * scale, **kw)
    monkeypatch.setattr(adaptive.AdaptiveEngine, '__init__', warmer)
    return sweet_eval.evaluate(config, str(tmp_path / workdir), method='sweet', encoder_config=CFG,
                               exit_config=ECFG, params=models['sweet'], splits=splits, encode_fn=encode)

  run(1 + 1e-4, 'ties')
  curve = json.loads((tmp_path / 'ties' / 'eval' / 'curve.json').read_text())
  assert curve['tie_tolerance'] == 1e-2
  for point in curve['points']:  # the flips, from the offline logits at both temperatures
    sweep = [np.asarray(x) for x in curves.assign_exits(logits, ones, point['threshold'])]
    warm = [np.asarray(x) for x in curves.assign_exits(logits, ones * (1 + 1e-4), point['threshold'])]
    flips = int(np.sum((sweep[0] != warm[0]) | (sweep[1] != warm[1])))
    assert flips >= 1 and point['engine_ties'] == flips
    assert point['engine_agreement'] == pytest.approx(1 - flips / 14)
  with pytest.raises(RuntimeError, match=r'disagree on \d+ of 14 timed examples beyond the tie tolerance '
                                         r'\(the first: example (\d+)') as e:
    run(3.0, 'wrong')
  k = int(str(e.value).split('the first: example ')[1].split(',')[0])
  near = curves.borderline(logits, ones, thresholds[0], 'confidence', 1e-2)
  assert not near[:, k].any()  # a real disagreement: nowhere near the threshold or a tie between classes


def test_check_engine_accepts_only_borderline_differences():
  from drivers import sweet_eval
  real = np.array([True, True, True])
  want_exit, want_pred = np.array([0, 2, 1]), np.array([1, 1, 0])
  got = adaptive.Result(np.array([1, 1, 0]), np.array([1, 2, 1]), {})  # example 0 left one exit later
  near = np.zeros((3, 3), bool)
  with pytest.raises(RuntimeError, match='example 0, engine exit 1 prediction 1, sweep exit 0'):
    sweet_eval.check_engine(got, real, want_exit, want_pred, 0.5, borderline=near)
  near[2, 0] = True  # borderline only after both exits: not a tie
  with pytest.raises(RuntimeError, match='beyond the tie tolerance'):
    sweet_eval.check_engine(got, real, want_exit, want_pred, 0.5, borderline=near)
  near[1, 0] = True  # at the engine's exit, the later of the two: a tie
  assert sweet_eval.check_engine(got, real, want_exit, want_pred, 0.5, borderline=near) == 1


@pytest.mark.parametrize('rule', ['confidence', 'entropy', 'patience'])
def test_borderline_against_a_loop(rule):
  import math
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 40, 4)) * 2
  logits[1, :5, :2] = logits[1, :5].max(-1, keepdims=True) + 1  # exact ties between the top two classes
  temps, tol = np.array([0.8, 1.0, 1.7]), 0.03
  threshold = 0.6 if rule == 'confidence' else 1.0 if rule == 'entropy' else 2
  got = curves.borderline(logits, temps, threshold, rule, tol)
  for e in range(3):
    for n in range(40):
      ex = [math.exp(v / temps[e]) for v in logits[e, n]]
      p = sorted(v / sum(ex) for v in ex)
      want = p[-1] - p[-2] <= tol
      if rule == 'confidence':
        want = want or abs(p[-1] - threshold) <= tol
      elif rule == 'entropy':
        want = want or abs(-sum(q * math.log(q) for q in p) - threshold) <= tol
      assert got[e, n] == want, (e, n)
  assert got[1, :5].all() and 0 < got.sum() < got.size
