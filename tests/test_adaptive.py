"""The adaptive engine (sweet_jax.adaptive) answers exactly as the offline sweep (curves.assign_exits) says:
same exit and prediction, example for example, for every mode, method, rule and batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from sweet_jax import adaptive, curves, exits

CFG = encoder_jax.EncoderConfig(vocab_size=37, hidden_size=10, num_layers=5, num_heads=2, intermediate_size=13,
                                max_position_embeddings=23)
ECFG = exits.ExitConfig((1, 3, 5), 3, pooling='mean')
N, S = 29, 7
TEMPS = np.array([0.7, 1.3, 1.0], np.float32)


def sharpen(head):
  # Random heads at init scale give near-uniform softmax; a large classifier spreads confidences over (1/3, 1).
  return {**head, 'classifier': {'kernel': head['classifier']['kernel'] * 1000.0, 'bias': head['classifier']['bias']}}


@pytest.fixture(scope='module')
def models():
  pretrained = encoder_jax.init_params(CFG, jax.random.key(0))
  ee = exits.init_exit_model(jax.random.key(1), CFG, pretrained, ECFG)
  ee['heads'] = tuple(sharpen(h) for h in ee['heads'])
  mm = exits.init_multi_model(jax.random.key(3), CFG, pretrained, ECFG)
  mm['models'] = tuple({**m, 'head': sharpen(m['head'])} for m in mm['models'])
  return {'sweet': ee, 'early_exit': ee, 'multi_model': mm}


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  lens = rng.integers(2, S + 1, N)
  mask = (np.arange(S)[None] < lens[:, None]).astype(np.int32)
  ids = rng.integers(1, CFG.vocab_size, (N, S)).astype(np.int32) * mask
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': np.zeros_like(ids)}


def all_exit_logits(method, params, data):
  if method == 'multi_model':
    return exits.forward_multi_model(CFG, ECFG, params, data)
  return exits.forward(CFG, ECFG, params, data, stop_gradient=False)


def batches_of(data, size):
  return [{k: v[i:i + size] for k, v in data.items()} for i in range(0, N, size)]


def scores(logits, rule):
  """What each rule compares with its threshold, [E, N] (offline, float64)."""
  z = np.asarray(logits, np.float64) / TEMPS[:, None, None]
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p.max(-1) if rule == 'confidence' else -(p * np.log(p)).sum(-1)


def safe_thresholds(logits, rule, count=None):
  """Thresholds in the middle of wide gaps between observed scores (so float rounding between a batch of 29
  and a compacted batch of 3 cannot flip a decision), chosen so that every exit gets examples at one of
  them: for each exit, the candidate sending most examples there; plus the median candidate."""
  s = np.unique(scores(logits, rule).ravel())
  wide = np.flatnonzero(s[1:] - s[:-1] > 1e-3)  # gaps far wider than float32 rounding
  candidates = [float((s[j] + s[j + 1]) / 2) for j in wide]
  counts = np.array([np.bincount(np.asarray(curves.assign_exits(logits, TEMPS, t, rule=rule)[0]), minlength=3)
                     for t in candidates])
  picks = {candidates[len(candidates) // 2]} | {candidates[int(np.argmax(counts[:, e]))] for e in range(3)}
  return sorted(picks)[:count]


def check(method, params, data, *, rule, thresholds, batch_size, input_batch, buckets=None,
          modes=adaptive.MODES):
  logits = all_exit_logits(method, params, data)
  engine = adaptive.AdaptiveEngine(CFG, ECFG, params, method=method, temperatures=TEMPS, rule=rule,
                                   batch_size=batch_size, buckets=buckets)
  seen_exits = set()
  for t in thresholds:
    want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, jnp.asarray(TEMPS), t, rule=rule))
    seen_exits |= set(want_exit.tolist())
    for mode in modes:
      got = engine.run(batches_of(data, input_batch), t, mode=mode)
      np.testing.assert_array_equal(got.exit_index, want_exit, err_msg=f'{method} {rule} {t} {mode}')
      np.testing.assert_array_equal(got.predictions, want_pred, err_msg=f'{method} {rule} {t} {mode}')
      assert sum(got.stats['left']) == N
  # The thresholds exercise every exit (patience: random heads rarely agree, so at least two).
  assert len(seen_exits) >= (2 if rule == 'patience' else 3)
  return engine


@pytest.mark.parametrize('method', ['sweet', 'early_exit', 'multi_model'])
def test_confidence_matches_offline_sweep(models, data, method):
  thresholds = [0.0] + safe_thresholds(all_exit_logits(method, models[method], data), 'confidence') + [1.5]
  # Engine batch 8, input batches of 8 (the last one 5), rows padded up to buckets 3 or 8.
  check(method, models[method], data, rule='confidence', thresholds=thresholds, batch_size=8, input_batch=8,
        buckets=(3, 8))


def test_batch_size_not_a_multiple_of_a_bucket(models, data):
  method = 'sweet'
  thresholds = safe_thresholds(all_exit_logits(method, models[method], data), 'confidence')
  # Input batches of 5 (the last one 4) in an engine of batch 7 with buckets (2, 4, 7).
  check(method, models[method], data, rule='confidence', thresholds=thresholds, batch_size=7, input_batch=5,
        buckets=(2, 4))


@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_entropy_matches_offline_sweep(models, data, method):
  thresholds = [5.0] + safe_thresholds(all_exit_logits(method, models[method], data), 'entropy') + [-1.0]
  check(method, models[method], data, rule='entropy', thresholds=thresholds, batch_size=8, input_batch=8,
        buckets=(3, 8))


@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_patience_matches_offline_sweep(models, data, method):
  check(method, models[method], data, rule='patience', thresholds=[1, 2, 3], batch_size=8, input_batch=8,
        buckets=(3, 8))


def test_padding_rows_are_skipped_and_full_model_is_the_last_exit(models, data):
  params = models['sweet']
  engine = adaptive.AdaptiveEngine(CFG, ECFG, params, method='sweet', temperatures=TEMPS, batch_size=8,
                                   buckets=(3, 8))
  batches = batches_of(data, 8)
  # Pad the last batch (5 rows) to 8 with copies of its first row, as pipeline.data.iterate_batches does.
  last = batches[-1]
  batches[-1] = {k: np.concatenate([v, np.repeat(v[:1], 3, 0)]) for k, v in last.items()}
  batches = [dict(b, example_mask=np.array([1.0] * 8 if i < 3 else [1.0] * 5 + [0.0] * 3, np.float32))
             for i, b in enumerate(batches)]
  logits = np.asarray(all_exit_logits('sweet', params, data))
  t = safe_thresholds(logits, 'confidence')[1]
  want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, jnp.asarray(TEMPS), t))
  for mode in adaptive.MODES:
    got = engine.run(batches, t, mode=mode)
    assert got.exit_index.shape == (32,)
    np.testing.assert_array_equal(got.exit_index[:N], want_exit)
    np.testing.assert_array_equal(got.predictions[:N], want_pred)
    np.testing.assert_array_equal(got.exit_index[N:], -1)
  np.testing.assert_array_equal(engine.run_full(batches)[:N], logits[-1].argmax(-1))


def test_stream_runs_full_batches_and_calm_runs_whole_batches(models, data):
  params = models['sweet']
  engine = adaptive.AdaptiveEngine(CFG, ECFG, params, method='sweet', temperatures=TEMPS, batch_size=8,
                                   buckets=(3, 8))
  logits = all_exit_logits('sweet', params, data)
  t = safe_thresholds(logits, 'confidence')[1]
  stream = engine.run(batches_of(data, 8), t, mode='stream').stats
  compact = engine.run(batches_of(data, 8), t, mode='compact').stats
  calm = engine.run(batches_of(data, 8), t, mode='calm').stats
  for i in (1, 2):
    entering = sum(stream['left'][i:])
    # Continuous batching: full batches of 8, and one flush of the remainder at the end.
    assert stream['calls'][i] == -(-entering // 8)
    # Compaction: one call per input batch that still has examples, at most the next bucket of rows each.
    assert compact['calls'][i] <= 4 and entering <= compact['rows'][i] <= entering + 5 * compact['calls'][i]
    # No compaction: every call runs the whole batch.
    assert calm['rows'][i] >= entering and calm['rows'][i] >= compact['rows'][i]
  assert stream['left'] == compact['left'] == calm['left']
  with pytest.raises(ValueError, match='exceeds the engine batch_size'):
    engine.run(batches_of(data, 9), t)
  with pytest.raises(ValueError, match='Unknown mode'):
    engine.run(batches_of(data, 8), t, mode='eager')


def test_default_buckets():
  assert adaptive.default_buckets(64) == (8, 16, 24, 32, 40, 48, 56, 64)
  assert adaptive.default_buckets(5) == (1, 2, 3, 4, 5)
  assert adaptive.default_buckets(1) == (1,)


# ----------------------------------------------------------------------------------------------- sweet_eval

def test_sweet_eval_writes_curve_files(models, tmp_path, caplog, monkeypatch):
  import json
  import ml_collections
  import sweet_eval
  from pipeline import data

  rng = np.random.default_rng(5)
  words = ['good', 'bad', 'film', 'plot', 'dull', 'fun']

  def dataset(n):
    texts = tuple(' '.join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(n))
    return data.TextDataset((texts,), rng.integers(0, 3, n), ('a', 'b', 'c'))

  def encode(texts_a, texts_b=None):
    del texts_b  # single sentences
    ids = np.zeros((len(texts_a), S), np.int32)
    for i, t in enumerate(texts_a):
      codes = [1 + ord(c) % (CFG.vocab_size - 1) for c in t][:S]
      ids[i, :len(codes)] = codes
    return {'input_ids': ids, 'attention_mask': (ids > 0).astype(np.int32), 'token_type_ids': np.zeros_like(ids)}

  config = ml_collections.ConfigDict({'eval': {'batch_size': 2, 'thresholds': (0.0, 0.6, 2.0), 'rule': 'confidence',
                                               'timing_examples': 6, 'timing_repeats': 1}})
  splits = data.Splits(dataset(10), dataset(12), dataset(7))
  from sweet_jax import calibration
  fits, real_fit = [], calibration.fit_temperatures
  monkeypatch.setattr(calibration, 'fit_temperatures', lambda z, y, **kw: fits.append((z, y)) or real_fit(z, y, **kw))
  out = sweet_eval.evaluate(config, str(tmp_path / 'a'), method='sweet', encoder_config=CFG, exit_config=ECFG,
                            params=models['sweet'], splits=splits, encode_fn=encode)
  curve = json.loads((tmp_path / 'a' / 'eval' / 'curve.json').read_text())
  assert curve['batch_size'] == 2 and curve['method'] == 'sweet' and len(curve['points']) == 3
  first, last = curve['points'][0], curve['points'][-1]
  assert first['exit_counts'] == [7, 0, 0] and last['exit_counts'] == [0, 0, 7]
  assert last['layer_fraction'] == 1.0 and first['flops_fraction'] < 0.5
  assert all(p['engine_agreement'] == 1.0 and p['measured_speedup'] > 0 for p in curve['points'])
  # Temperatures are fit once, on the 12 calibration examples alone (their labels, their logits), never on the
  # 10 train or 7 eval ones; that the splits are disjoint is pipeline.data's (test_data's splits tests).
  info = json.loads((tmp_path / 'a' / 'eval' / 'temperatures.json').read_text())
  assert info['calibrated'] and info['calibration_examples'] == 12
  (cal_logits, cal_labels), = fits
  np.testing.assert_array_equal(cal_labels, splits.calibration.labels)
  expected = exits.forward(CFG, ECFG, models['sweet'], encode(splits.calibration.texts[0]), stop_gradient=False)
  np.testing.assert_allclose(cal_logits, np.asarray(expected), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(info['temperatures'], real_fit(cal_logits, cal_labels), rtol=1e-6)
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


def test_budget_table_takes_the_best_point_within_each_budget():
  import sweet_eval
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
