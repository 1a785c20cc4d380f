"""The study reports (experiments/): aggregation against hand-computed numbers on synthetic per-run JSON,
claim sentences, paired claims on stored per-example outputs, and the small artifacts the README quotes.
The runners' machinery (skipping done cells, provenance, cell commands) is in test_study_runner.py."""

import math

import numpy as np
import pytest

from experiments import common, exit_study, gradient_conflict, papa_study, report, stats, sweet_study_a


def _run(method, seed, accs, points, task='movie_reviews', pooling='mean', n_eval=1000):
  """A raw exit-study run as exit_study.extract writes it. points: (threshold, accuracy, layer_fraction)."""
  return {'cell': f'{task}_{pooling}_{method}_s{seed}', 'method': method, 'seed': seed,
          'exit_layers': [1, 2, 4, 6], 'per_exit_accuracy': accs, 'eval_examples': n_eval,
          'labels': {'task': task, 'pooling': pooling, 'method': method, 'seed': seed, 'panel': f'{task}_{pooling}'},
          'curve': {'device': 'cpu x1', 'points': [
              {'threshold': t, 'accuracy': a, 'layer_fraction': f, 'flops_fraction': f, 'measured_speedup': 1 / f}
              for t, a, f in points]},
          'wall_s': {'train': 600.0, 'eval': 180.0}, 'machine': {'cpu': 'Test CPU', 'cpu_count': 2},
          'code': {'commit': 'abcdef0123456789', 'dirty': seed == 43}}


def _study_a_runs():
  return [
      _run('sweet', 42, [0.70, 0.75, 0.80, 0.81], [(0.5, 0.70, 0.25), (0.8, 0.78, 0.40), (1.0, 0.81, 1.0)]),
      _run('sweet', 43, [0.72, 0.77, 0.80, 0.83], [(0.5, 0.72, 0.25), (0.8, 0.76, 0.45), (1.0, 0.83, 1.0)]),
      _run('early_exit', 42, [0.60, 0.70, 0.80, 0.82], [(0.5, 0.60, 0.25), (0.8, 0.74, 0.60), (1.0, 0.82, 1.0)]),
      _run('early_exit', 43, [0.61, 0.71, 0.81, 0.82], [(0.5, 0.61, 0.25), (0.8, 0.70, 0.55), (1.0, 0.82, 1.0)]),
  ]


def test_spread_and_difference_by_hand():
  s = stats.Spread.of([0.80, 0.82, 0.84])
  assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02) and s.n == 3
  assert s.fmt() == '0.820 ± 0.020' and stats.Spread.of([0.5]).fmt() == '0.500 (1 run)'
  assert s.sem() == pytest.approx(0.02 / math.sqrt(3))
  assert stats.binomial_se(0.8, 100) == pytest.approx(0.04)
  # Paired by seed: differences 0.10, 0.11 -> mean 0.105, std 0.01 / sqrt(2), sem 0.005 (unpaired it would be
  # hypot(0.01, 0.005)); binomial part of the two means (0.71 and 0.605 on 1,000 examples) in quadrature.
  est, se, n = stats.difference([0.70, 0.72], [0.60, 0.61], 1000)
  binom = math.hypot(math.sqrt(0.71 * 0.29 / 1000), math.sqrt(0.605 * 0.395 / 1000))
  assert est == pytest.approx(0.105) and se == pytest.approx(math.hypot(0.005, binom)) and n == 2
  # Unequal lengths: unpaired; one value has no seed spread.
  est, se, n = stats.difference([0.7, 0.8], [0.5], 0)
  assert est == pytest.approx(0.25) and se == pytest.approx(stats.Spread.of([0.7, 0.8]).sem()) and n == 1


def test_verdicts_and_claim_sentence():
  assert stats.verdict(0.05, 0.02) == 'holds'  # 0.05 - 2 * 0.02 > 0
  assert stats.verdict(0.03, 0.02) == 'inconclusive within spread'
  assert stats.verdict(-0.05, 0.02) == 'does not hold'
  assert stats.verdict(-0.05, 0.01, threshold=-0.10) == 'holds'  # a drop of 5% is below a 10% bound
  text = stats.claim_sentence('X beats Y', 0.05, 0.02, seeds=3, scale=100)
  assert text == ('- X beats Y: **holds here** (estimate +5.0 ± 2.0 standard error, threshold +0.0; 3 seeds).')
  assert 'single run' in stats.claim_sentence('c', 0.0, 0.01, seeds=1)


def test_per_exit_and_budget_tables_by_hand():
  runs = _study_a_runs()
  table = exit_study.per_exit_table(runs, ['method'])
  # early_exit sorts first; exit L1: mean(0.60, 0.61) = 0.605, std |0.60 - 0.61| / sqrt(2) = 0.00707.
  assert '| early_exit | 2 | 0.605 ± 0.007 | 0.705 ± 0.007 | 0.805 ± 0.007 | 0.820 ± 0.000 |' in table
  assert '| sweet | 2 | 0.710 ± 0.014 | 0.760 ± 0.014 | 0.800 ± 0.000 | 0.820 ± 0.014 |' in table
  # Interpolated along each curve. At 0.5 of the layers: sweet s42 between (0.40, 0.78) and (1.0, 0.81):
  # 0.78 + 0.03 x 0.1 / 0.6 = 0.785; s43 between (0.45, 0.76) and (1.0, 0.83): 0.76 + 0.07 x 0.05 / 0.55.
  sweet_half = [0.785, 0.76 + 0.07 * 0.05 / 0.55]
  ee_half = [0.60 + 0.14 * 0.25 / 0.35, 0.61 + 0.09 * 0.25 / 0.30]  # 0.70 and 0.685
  cols = [('layer_fraction', b) for b in (0.2, 0.25, 0.5, 1.0)]
  budget = exit_study.budget_table(runs, ['method'], cols)
  fmt = lambda v: stats.Spread.of(v).fmt()
  assert f'| sweet | 2 | - | 0.710 ± 0.014 | {fmt(sweet_half)} | 0.820 ± 0.014 |' in budget
  assert f'| early_exit | 2 | - | 0.605 ± 0.007 | {fmt(ee_half)} | 0.820 ± 0.000 |' in budget
  assert fmt(sweet_half) == '0.776 ± 0.013'
  assert '| method | seeds | layers 0.2 | layers 0.25 | layers 0.5 | layers 1 |' in budget
  # Matched measured speedup 2x (time fraction 0.5; these runs' speedup is 1 / layer fraction): as above.
  assert fmt(sweet_half) in exit_study.budget_table(runs, ['method'], [('time_fraction', 0.5)])
  # A seed whose curve does not reach down to the budget is counted out and marked.
  runs[1]['curve']['points'][0]['layer_fraction'] = 0.3
  assert '0.700 (1 run) [1/2]' in exit_study.budget_table(runs, ['method'], [('layer_fraction', 0.25)])


def test_curve_band_by_hand():
  x, y, s = exit_study.curve_band(_study_a_runs()[:2], 'layer_fraction')
  np.testing.assert_allclose(x, [0.25, 0.425, 1.0])
  np.testing.assert_allclose(y, [0.71, 0.77, 0.82])
  np.testing.assert_allclose(s, np.std([[0.70, 0.78, 0.81], [0.72, 0.76, 0.83]], axis=0, ddof=1))


def test_study_a_claims_by_hand():
  by = {m: [r for r in _study_a_runs() if r['method'] == m] for m in ('sweet', 'early_exit')}
  out = sweet_study_a.method_claims('movie_reviews', by, budgets_=(0.5,))
  assert len(out) == 5
  # Averaged over exits: sweet 0.765, 0.78; early_exit 0.73, 0.7375 -> differences 0.035, 0.0425 -> +3.9.
  avg = out.pop(2)
  assert "SWEET's exits are more accurate than Early-Exit's on average" in avg and 'paper: +1.1' in avg
  avg_binom = math.hypot(math.sqrt(0.7725 * 0.2275 / 1000), math.sqrt(0.73375 * 0.26625 / 1000))
  assert f'+3.9 ± {100 * math.hypot(0.00375, avg_binom):.1f} standard error' in avg
  # First exit: sweet - early_exit per seed 0.10, 0.11 -> 0.105; se = hypot(sem 0.005, binomial of 0.71 and 0.605).
  binom = math.hypot(math.sqrt(0.71 * 0.29 / 1000), math.sqrt(0.605 * 0.395 / 1000))
  se = math.hypot(0.005, binom)
  assert out[0].startswith("- movie_reviews: SWEET's first exit is more accurate than Early-Exit's")
  assert f'+10.5 ± {100 * se:.1f} standard error' in out[0] and '**holds here**' in out[0]
  # Last exit: early_exit - sweet = 0.01, -0.01 -> 0.0: inconclusive.
  assert 'estimate +0.0' in out[1] and 'inconclusive within spread' in out[1]
  # At half the layers, interpolated: 0.785 - 0.70, 0.7664 - 0.685 -> +8.3 points (the best grid point within
  # the budget, 0.78 - 0.60 and 0.76 - 0.61, would say +16.5).
  assert 'at 0.5 of the layers' in out[2] and '+8.3' in out[2] and '**holds here**' in out[2]
  # Area: both curves start at 0.25; sweet s42's mean over 0.25-1 by trapezoids, by hand.
  sweet_area = ((0.70 + 0.78) / 2 * 0.15 + (0.78 + 0.81) / 2 * 0.6) / 0.75
  assert exit_study.budgets.mean_accuracy(by['sweet'][0]['curve']['points'], 'layer_fraction', 0.25, 1.0) == \
      pytest.approx(sweet_area)
  assert 'on average over 0.25-1 of the layers' in out[3]
  # Early-Exit against Multi-Model at half the layers. Multi-Model's points (0.3, a) and (1.5, 0.8): at 0.5,
  # a + (0.8 - a) x 0.2 / 1.2 = 0.675 and 0.65, against Early-Exit's 0.70 and 0.685 -> +3.0 points. Its grid
  # point within the budget (0.65, 0.62) would have said -3.0.
  by['multi_model'] = [_run('multi_model', s, [0.7] * 4, [(0.5, a, 0.3), (1.0, 0.8, 1.5)])
                       for s, a in ((42, 0.65), (43, 0.62))]
  ee_mm = sweet_study_a.budget_claims('movie_reviews', by, (0.5,))[-2]
  assert ee_mm.startswith('- movie_reviews: Early-Exit is more accurate than Multi-Model at 0.5 of the layers')
  assert 'estimate +3.0' in ee_mm


def test_study_readme_and_figures(tmp_path):
  study_dir = tmp_path / 'study'
  for r in _study_a_runs():
    common.write_json(str(study_dir / 'runs' / f'{r["cell"]}.json'), {k: v for k, v in r.items() if k != 'cell'})
  common.write_json(str(study_dir / 'failures.json'), {'tweets_mean_sweet_s42': 'train exited with status 1: boom'})
  text = sweet_study_a.write_report(str(study_dir), sweet_study_a.CONFIGS, 'runs/x')
  assert (study_dir / 'README.md').read_text() == text
  assert '4 cells done.' in text and '**holds here**' in text and 'tweets_mean_sweet_s42' in text
  assert '| movie_reviews_mean_sweet_s42 | 180 | 600 | Test CPU (2 cores); jax cpu x1 | abcdef0123 |' in text
  assert '| movie_reviews_mean_sweet_s43 | 180 | 600 | Test CPU (2 cores); jax cpu x1 | abcdef0123+ |' in text
  runs = _study_a_runs()
  runs[0]['redone'] = [{'steps': ['eval'], 'code': {'commit': '0123456789abcdef'}}]
  assert '| abcdef0123; eval again at 0123456789 |' in report.timing_table(
      [dict(r, cell=r['cell']) for r in runs])
  assert (study_dir / 'movie_reviews_mean.png').stat().st_size > 0
  assert '## Discussion' not in text
  (study_dir / 'notes.md').write_text('Hand-written: SWEET wins here.\n')
  text = sweet_study_a.write_report(str(study_dir), sweet_study_a.CONFIGS, 'runs/x')
  assert text.index('## Claims') < text.index('## Discussion\n\nHand-written: SWEET wins here.') < text.index(
      '## Per-exit accuracy')
  empty = report.write_readme(str(tmp_path / 'empty'), 'T', 'S', [], [], [])
  assert 'No results yet' in empty and '## Claims' not in empty


def _papa_run(model, seed, accs, n_eval=1000, heads=72):
  fractions = papa_study.FRACTIONS
  return {'cell': f'{model}_movie_reviews_s{seed}', 'eval_examples': n_eval, 'num_heads': heads,
          'labels': {'model': model, 'task': 'movie_reviews', 'seed': seed},
          'results': [{'k': k, 'num_constant_heads': k, 'fraction_constant': f, 'accuracy': a,
                       'relative_drop': (accs[0] - a) / accs[0]}
                      for k, f, a in zip(papa_study.ks_for(heads), fractions, accs)]}


def test_papa_ks_drops_and_claims_by_hand():
  assert papa_study.ks_for(72) == (0, 9, 18, 36, 54, 72) and papa_study.ks_for(144) == (0, 18, 36, 72, 108, 144)
  runs = [_papa_run('minilm', 42, [0.80, 0.80, 0.80, 0.80, 0.78, 0.76]),
          _papa_run('minilm', 43, [0.80, 0.80, 0.80, 0.79, 0.78, 0.73]),
          _papa_run('mpnet', 42, [0.90, 0.90, 0.89, 0.88, 0.80, 0.70], heads=144),
          _papa_run('mpnet', 43, [0.90, 0.90, 0.89, 0.88, 0.80, 0.70], heads=144)]
  drop, se, n = papa_study.relative_drop(runs[:2], 1.0)
  # Paired accuracy differences 0.04, 0.07 (sem 0.015) and the binomial errors of 0.800 and 0.745, over 0.8.
  se_hand = math.hypot(0.015, math.sqrt(0.8 * 0.2 / 1000), math.sqrt(0.745 * 0.255 / 1000)) / 0.8
  assert drop == pytest.approx(0.06875) and se == pytest.approx(se_hand) and n == 2
  table = papa_study.table(runs)
  # Per-seed drops 5% and 8.75%: mean 6.9, std 3.75 / sqrt(2) = 2.7.
  assert '| minilm | movie_reviews | 1.000 | 2 | 0.745 ± 0.021 | 6.9 ± 2.7 % |' in table
  out = papa_study.claims(runs)
  # minilm all heads: 6.9% drop, se 3.0%: 6.9 + 2 se > 10 -> inconclusive.
  assert out[0].startswith('- minilm, movie_reviews: every head constant') and 'inconclusive' in out[0]
  assert f'estimate -6.9% ± {100 * se_hand:.1f}%' in out[0]
  # mpnet all heads: 0.2/0.9 = 22.2% drop, far above 10%: does not hold.
  assert out[2].startswith('- mpnet, movie_reviews: every head constant') and '**does not hold here**' in out[2]
  # The better model (mpnet, 0.900) loses more: 22.2% - 6.9% = +15.3 points.
  assert 'the better model (mpnet, k = 0 accuracy 0.900' in out[4] and 'estimate +15.3%' in out[4]
  assert '**holds here**' in out[4]


def test_gradient_conflict_summary_by_hand():
  def rep(means):
    groups = ['embeddings', 'layers_0', 'layers_1']
    return {'groups': groups, 'mean_cosine': dict(zip(groups, means)), 'exit_layers': [1, 2], 'batches': 8,
            'cosine': {g: [[1.0, m], [m, 1.0]] for g, m in zip(groups, means)}}
  run = {'cell': 'minilm', 'labels': {'model': 'minilm'}, 'pretrained': rep([0.5, 0.3, None]),
         'trained': rep([-0.2, 0.1, None])}
  assert gradient_conflict.shared_mean(run['pretrained']) == pytest.approx(0.4)
  text = gradient_conflict.sentences([run])[0]
  assert ('mean cosine (over every layer group and pair of exits) +0.400 at the pretrained start and -0.050 '
          'after') in text
  assert 'negative mean (conflict): 0 and 1 of 3' in text
  assert ('most negative pair: pretrained +0.300 (exits after layers 1 and 2, layers_0); trained -0.200 (exits '
          'after layers 1 and 2, embeddings)') in text
  four = {'groups': ['embeddings', 'layers_0'], 'exit_layers': [1, 2, 4, 6], 'cosine': {
      'embeddings': np.array([[1, .9, -.6, -.5], [.9, 1, -.7, -.4], [-.6, -.7, 1, .95], [-.5, -.4, .95, 1]]).tolist(),
      'layers_0': [[None] * 4, [None, 1, -.8, .1], [None, -.8, 1, .2], [None, .1, .2, 1]]}}
  assert gradient_conflict.most_negative(four) == (-.8, 'layers_0', 2, 4)  # skips the Nones of exit 1
  # Over all 9 (group, pair) cosines: embeddings' six sum to -0.35, layers_0's three to -0.5. The mean over the
  # two groups' pair means, (-0.35 / 6 - 0.5 / 3) / 2 = -0.1125, weighs layers_0's three pairs as much as six.
  assert gradient_conflict.pairs_mean(four) == pytest.approx(-0.85 / 9)
  assert '| minilm | layers_1 | - | - |' in gradient_conflict.table([run])


def _predictions_run(tmp_path, method, seed, first_exit_right, rng, last_exit_right=None):
  """A study-A run with stored outputs: 400 examples, 4 exits; exit 0 right on `first_exit_right` of them, the
  last on `last_exit_right` when given, the others right on 80%; confidences random, so the dense sweep moves
  examples between exits."""
  from drivers.predictions import Predictions
  n = 400
  labels = rng.integers(0, 2, n).astype(np.int8)
  right = np.stack([np.arange(n) < first_exit_right] + [rng.random(n) < 0.8 for _ in range(3)])
  if last_exit_right is not None:
    right[-1] = np.arange(n) < last_exit_right
  pred = np.where(right, labels, 1 - labels).astype(np.int8)
  conf = rng.uniform(0.5, 1.0, (4, n)).astype(np.float32)
  layers = np.array([1, 2, 4, 6], np.int32)
  p = Predictions(pred, conf, labels, np.arange(n, dtype=np.int32), layers, 'exit_layer', 'test-set-hash',
                  method=method, layers_run=layers, exit_flops=np.repeat(layers[:, None], n, 1).astype(float),
                  full_flops=np.full(n, 6.0))
  path = tmp_path / f'{method}_{seed}.predictions.npz'
  p.save(str(path))
  run = _run(method, seed, p.correct().mean(1).tolist(), [(0.5, 0.7, 0.2), (1.0, 0.8, 1.0)], n_eval=n)
  return dict(run, attachments={'.predictions.npz': str(path)}), p


def test_study_claims_are_paired_on_stored_predictions(tmp_path):
  from drivers import predictions
  from experiments import budgets, paired
  rng = np.random.default_rng(0)
  sw = [_predictions_run(tmp_path, 'sweet', s, 300, rng) for s in (42, 43)]
  ee = [_predictions_run(tmp_path, 'early_exit', s, 240, rng) for s in (42, 43)]
  by = {'sweet': [r for r, _ in sw], 'early_exit': [r for r, _ in ee]}
  items = sweet_study_a.method_claims('movie_reviews', by, budgets_=(0.5,))
  assert all(isinstance(c, stats.Claim) for c in items)  # every comparison is paired, the area too
  first = items[0]
  # By hand: exit 0 is right on 300 and 240 of the 400 examples in both seeds: +15 points.
  assert first.result.effect == pytest.approx(0.15) and first.result.seeds == 2 and first.result.examples == 400
  # At half the layers, the paired effect is the difference of the dense curves' interpolated accuracies.
  want = np.mean([budgets.accuracy_at(predictions.dense_curve(a), 'layer_fraction', 0.5)
                  - budgets.accuracy_at(predictions.dense_curve(b), 'layer_fraction', 0.5)
                  for (_, a), (_, b) in zip(sw, ee)])
  assert items[3].result.effect == pytest.approx(want, abs=1e-12)
  lines = paired.render(items)
  assert lines[0].startswith("- movie_reviews: SWEET's first exit is more accurate than Early-Exit's (accuracy "
                             'points): **holds** (+15.0 points, 95% interval')
  assert 'paired bootstrap' in lines[0] and 'n = 400 x 2' in lines[0]
  # The area: the difference of the dense curves' mean accuracies over the range both cover.
  lo = budgets.common_range([predictions.dense_curve(p) for _, p in sw + ee], 'layer_fraction')[0]
  want = np.mean([budgets.mean_accuracy(predictions.dense_curve(a), 'layer_fraction', lo, 1.0)
                  - budgets.mean_accuracy(predictions.dense_curve(b), 'layer_fraction', lo, 1.0)
                  for (_, a), (_, b) in zip(sw, ee)])
  assert items[4].result.effect == pytest.approx(want, abs=1e-12) and f'over {lo:.2f}-1 of the layers' in lines[4]
  # The summary tables read the same dense sweep, not the runs' two evaluated points.
  assert exit_study.at_budget(sw[0][0], 0.5) == pytest.approx(
      budgets.accuracy_at(predictions.dense_curve(sw[0][1]), 'layer_fraction', 0.5))
  assert exit_study.at_budget(sw[0][0], 0.5) != budgets.accuracy_at(sw[0][0]['curve']['points'], 'layer_fraction', 0.5)
  # A seed without stored outputs: the claim is paired on the other seed, and says so.
  del by['sweet'][1]['attachments']['.predictions.npz']
  one = sweet_study_a.method_claims('movie_reviews', by, budgets_=(0.5,))[0]
  assert one.result.seeds == 1 and one.result.effect == pytest.approx(0.15)
  assert one.text.endswith('[paired on seed 42, of 2: the others have no stored outputs]')
  # No seed with stored outputs for both methods: the summary rule.
  del by['sweet'][0]['attachments']['.predictions.npz']
  assert isinstance(sweet_study_a.method_claims('movie_reviews', by, budgets_=(0.5,))[0], str)
  # Runs scored on different test sets are refused.
  other = dict(ee[0][0], attachments={'.predictions.npz': str(tmp_path / 'other.npz')})
  p = ee[0][1]
  import dataclasses
  dataclasses.replace(p, test_sha256='another-test-set').save(str(tmp_path / 'other.npz'))
  with pytest.raises(ValueError, match='different test sets'):
    paired.correctness([ee[1][0], other], paired.exit_correct(0))


def test_pooling_claim_is_paired_on_the_seeds_both_poolings_ran(tmp_path):
  rng = np.random.default_rng(1)
  mean = [_predictions_run(tmp_path, 'early_exit', s, right, rng)[0] for s, right in ((42, 300), (43, 320))]
  cls = _predictions_run(tmp_path / 'cls', 'early_exit', 42, 240, rng)[0]
  # Only seed 42 ran with [CLS] pooling: exit 0 right on 300 against 240 of the 400 examples, +15 points.
  (c,) = sweet_study_a.pooling_claim(mean, [cls])
  assert isinstance(c, stats.Claim) and c.result.seeds == 1 and c.result.examples == 400
  assert c.result.effect == pytest.approx(0.15) and c.text.endswith('(accuracy points, mean minus cls)')
  # Without the [CLS] run's outputs: the summary rule on the same seed.
  del cls['attachments']['.predictions.npz']
  (s,) = sweet_study_a.pooling_claim(mean, [cls])
  assert isinstance(s, str) and 'estimate +15.0' in s and 'single run' in s
  assert sweet_study_a.pooling_claim(mean, []) == []


def test_last_exit_gap_claim_pairs_the_studies_on_their_common_seeds(tmp_path):
  from experiments import sweet_study_b
  rng = np.random.default_rng(2)
  run = lambda d, m, s, last: _predictions_run(tmp_path / d, m, s, 250, rng, last_exit_right=last)[0]
  # MiniLM's last exits: Early-Exit right on 320 of the 400 examples, SWEET on 300 (seed 42), a +5.0-point gap;
  # MPNet (seed 42 only): 310 against 300, +2.5. The difference of gaps, +2.5 points, on seed 42 alone.
  minilm = {'early_exit': [run('a', 'early_exit', 42, 320), run('a', 'early_exit', 43, 330)],
            'sweet': [run('a', 'sweet', 42, 300), run('a', 'sweet', 43, 290)]}
  mpnet = {'early_exit': [run('b', 'early_exit', 42, 310)], 'sweet': [run('b', 'sweet', 42, 300)]}
  c = sweet_study_b.gap_claim(minilm, mpnet)
  assert isinstance(c, stats.Claim) and 'seeds 42, which both' in c.text
  assert c.result.effect == pytest.approx(0.025) and (c.result.seeds, c.result.examples) == (1, 400)
  # Without MPNet SWEET's outputs: the summary rule, MiniLM over both its seeds ((20 + 40) / 2 / 400 = +7.5).
  del mpnet['sweet'][0]['attachments']['.predictions.npz']
  s = sweet_study_b.gap_claim(minilm, mpnet)
  assert isinstance(s, str) and 'MiniLM gap +7.5 (2 seeds), MPNet gap +2.5 (1)' in s and 'estimate +5.0' in s


def test_summary_claims_read_every_run_from_its_evaluated_thresholds_unless_all_have_outputs(tmp_path):
  from experiments import exit_study, paired
  rng = np.random.default_rng(3)
  sw = _predictions_run(tmp_path, 'sweet', 42, 300, rng)[0]  # evaluated: (0.2 of the layers, 0.7), (1.0, 0.8)
  ee = _run('early_exit', 42, [0.6, 0.7, 0.8, 0.8], [(0.5, 0.6, 0.2), (1.0, 0.8, 1.0)], n_eval=400)
  # By hand at 0.6 of the layers, on the evaluated points: SWEET 0.7 + 0.5 x 0.1 = 0.75, Early-Exit 0.6 + 0.5 x 0.2
  # = 0.7: +5.0 points. SWEET's dense sweep reads another accuracy there, which must not enter the comparison.
  assert exit_study.at_budget(sw, 0.6) != pytest.approx(0.75)
  s = sweet_study_a.compare('c', [sw], [ee], paired.at_budget(0.6), lambda r: exit_study.at_budget(r, 0.6))
  assert isinstance(s, str) and 'estimate +5.0' in s
  (sw_alike,), _ = exit_study.read_alike([sw], [ee])
  assert exit_study.at_budget(sw_alike, 0.6) == pytest.approx(0.75) and sw['attachments']  # the run is not changed
  # SWEET's dense sweep reaches down to 1/6 of the layers (every example at exit L1), its evaluated grid to 0.2:
  # below 0.2 the summary rule cannot judge, though the dense sweep alone would have answered.
  assert exit_study.at_budget(sw, 0.18) is not None
  s = sweet_study_a.compare('c', [sw], [ee], paired.at_budget(0.18), lambda r: exit_study.at_budget(r, 0.18))
  assert s == "- c: not judged (a run's evaluated curve does not reach this budget)."
  # With outputs on both sides, both are read densely (and the claim is paired).
  ee2 = _predictions_run(tmp_path / 'ee', 'early_exit', 42, 240, rng)[0]
  assert exit_study.read_alike([sw], [ee2]) == [[sw], [ee2]]


def test_artifacts_truncation_and_timing_spread_by_hand(monkeypatch):
  from experiments import artifacts
  # Room for 3 word pieces: texts of 2, 3, 5 and 8 pieces; two are cut, losing 2 + 5 of the 18 pieces.
  t = artifacts.truncation([2, 3, 5, 8], 3)
  assert t['texts_truncated'] == 0.5 and t['word_pieces_cut'] == pytest.approx(7 / 18) and t['word_pieces'] == 18
  points = lambda speeds, acc=0.8: {'curve': {'points': [
      {'threshold': th, 'accuracy': acc, 'layer_fraction': 0.5, 'measured_speedup': s}
      for th, s in zip((0.5, 0.9), speeds)]}}
  versions = {artifacts.TIMED_FIRST: points((2.0, 1.8)), artifacts.TIMED_AGAIN: points((2.2, 1.15))}
  monkeypatch.setattr(artifacts, '_git_json', lambda commit, path: versions[commit])
  spread = artifacts.timing_spread(['c'])
  assert spread['largest_change']['relative_change'] == pytest.approx(1.15 / 1.8 - 1)  # -36%, not the +10%
  assert spread['largest_change']['threshold'] == 0.9 and len(spread['cells']['c']) == 2
  versions[artifacts.TIMED_AGAIN] = points((2.2, 1.15), acc=0.7)
  with pytest.raises(ValueError, match='different outputs'):
    artifacts.timing_spread(['c'])


def _papa_with_outputs(tmp_path, model, seed, right_per_k, heads, labels):
  """A PAPA run with stored outputs: probe k is right on the first right_per_k[k] of the 1,000 examples."""
  from drivers.predictions import Predictions
  n = len(labels)
  right = np.stack([np.arange(n) < r for r in right_per_k])
  p = Predictions(np.where(right, labels, 1 - labels).astype(np.int8), np.full(right.shape, 0.9, np.float32),
                  labels, np.arange(n, dtype=np.int32), np.array(papa_study.ks_for(heads), np.int32),
                  'constant_heads', 'same-test-set', method='papa')
  path = tmp_path / f'{model}_{seed}.predictions.npz'
  p.save(str(path))
  return dict(_papa_run(model, seed, [r / n for r in right_per_k], heads=heads),
              attachments={'.predictions.npz': str(path)})


def test_papa_claims_paired_on_stored_outputs(tmp_path):
  labels = np.random.default_rng(0).integers(0, 2, 1000).astype(np.int8)
  # MiniLM: half the heads constant loses 4 of 800 right answers in each seed (a 0.5% relative drop), every head
  # 40 of 800 (5%). MPNet: 900 right, every head constant 810 (10%).
  runs = [_papa_with_outputs(tmp_path, 'minilm', s, [800, 800, 800, 796, 790, 760], 72, labels) for s in (42, 43)]
  runs += [_papa_with_outputs(tmp_path, 'mpnet', s, [900, 900, 890, 880, 860, 810], 144, labels) for s in (42, 43)]
  # The summary rule cannot decide 'half the heads cost < 2%' at 1,000 examples: its binomial error alone is
  # ~2.5% of the baseline.
  d = papa_study.relative_drop(runs[:2], 0.5)
  assert d[0] == pytest.approx(0.005) and stats.verdict(-d[0], d[1], -0.02) == 'inconclusive within spread'
  out = papa_study.claims(runs)
  # Paired: the two probes disagree on 4 examples only, so the drop's interval is tight: the margin holds.
  half = next(line for line in out if line.startswith('- minilm, movie_reviews: half the heads'))
  assert '**holds** (+0.5%,' in half and 'margin: below +2.0%' in half and 'n = 1000 x 2' in half
  every = next(line for line in out if line.startswith('- minilm, movie_reviews: every head'))
  assert '**holds** (+5.0%,' in every and 'margin: below +10.0%' in every
  # MPNet's drop with every head, 10.0%, sits on the 10% margin: not shown to lie below it.
  assert '**inconclusive** (+10.0%,' in next(line for line in out if line.startswith('- mpnet, movie_reviews: every'))
  # The better model (mpnet) loses 10.0% - 5.0% = +5.0 points more: paired over the same examples, holds.
  better = out[-1]
  assert better.startswith('- movie_reviews: the better model (mpnet') and '**holds** (+5.0%,' in better
  # MPNet's seed 43 without stored outputs: its claims and the comparison are paired on seed 42 and say so.
  del runs[3]['attachments']['.predictions.npz']
  out = papa_study.claims(runs)
  assert 'paired on seed 42, of 2' in out[-1] and 'n = 1000 x 1' in out[-1] and '**holds** (+5.0%,' in out[-1]
  assert 'n = 1000 x 2' in half


def test_constants_summary_by_hand():
  # 2 layers, 2 heads, L = 6; query slots 1..3. Layer 1: head 0 puts 0.4 on the previous slot, head 1 0.2;
  # mean 0.3. Every head puts 0.1 on itself, 0.05 on the next slot, and 0.5 + 0.1 q on the first token.
  a = np.zeros((2, 2, 6, 6))
  for q in range(1, 5):
    a[:, 0, q, q - 1], a[:, 1, q, q - 1] = 0.4, 0.2
    a[:, :, q, q], a[:, :, q, q + 1] = 0.1, 0.05
    a[:, :, q, 0] = 0.5 + 0.1 * q
  out = papa_study.constants_summary(a, slots=3)
  first = out['per_layer'][0]
  # Slot 1's previous slot is the first token, set last to 0.6: previous (0.6 + 0.3 + 0.3) / 3.
  assert first['previous'] == pytest.approx(0.4) and first['self'] == pytest.approx(0.1)
  assert first['next'] == pytest.approx(0.05)
  assert first['first_token'] == pytest.approx((0.6 + 0.7 + 0.8) / 3)
  assert first['first_token_rows'] == pytest.approx([0.6, 0.8])
  assert out['per_layer'][1]['layer'] == 2 and out['query_slots'] == [1, 3]
