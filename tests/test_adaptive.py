"""The adaptive engine (sweet_jax.adaptive) answers exactly as the offline sweep (curves.assign_exits) says:
same exit and prediction, example for example, for every mode, method, rule and batch size."""

import functools

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


# ------------------------------------------------------------------------------ four or more exits (issue 10)

def padded_batches(data, size):
  """Batches of `size` rows, the last padded to `size` with copies of its first row and example_mask 0 (as
  pipeline.data.iterate_batches yields them)."""
  n = data['input_ids'].shape[0]
  out = []
  for i in range(0, n, size):
    real = min(size, n - i)
    b = {k: np.concatenate([v[i:i + real], np.repeat(v[i:i + 1], size - real, 0)]) for k, v in data.items()}
    out.append(dict(b, example_mask=(np.arange(size) < real).astype(np.float32)))
  return out


def test_four_exits_lose_no_example():
  """The issue's reproduction: 6 random layers, exits after 1, 2, 4, 6, classifiers scaled by 30, threshold at
  the 96th percentile of the first three exits' confidences. The final flush drained exit 2's queue in two
  calls and pushed both calls' survivors into the last queue, past its capacity: examples came back as -1."""
  cfg = CFG.replace(num_layers=6)
  ecfg = exits.ExitConfig((1, 2, 4, 6), 3, pooling='mean')
  params = exits.init_exit_model(jax.random.key(1), cfg, encoder_jax.init_params(cfg, jax.random.key(0)), ecfg)
  params['heads'] = tuple({**h, 'classifier': {**h['classifier'], 'kernel': h['classifier']['kernel'] * 30.0}}
                          for h in params['heads'])
  n, rng = 77, np.random.default_rng(0)
  mask = (np.arange(S)[None] < rng.integers(2, S + 1, n)[:, None]).astype(np.int32)
  ids = rng.integers(1, cfg.vocab_size, (n, S)).astype(np.int32) * mask
  data = {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': np.zeros_like(ids)}
  logits = exits.forward(cfg, ecfg, params, data, stop_gradient=False)
  t = float(np.percentile(jax.nn.softmax(logits[:3], -1).max(-1), 96))
  want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, np.ones(4), t))
  assert want_exit[-1] == 3 and np.bincount(want_exit, minlength=4)[3] > n / 2  # most reach the last exit
  got = adaptive.AdaptiveEngine(cfg, ecfg, params, method='sweet', batch_size=8,
                                buckets=(8,)).run(padded_batches(data, 8), t)
  np.testing.assert_array_equal(got.exit_index[:n], want_exit)
  np.testing.assert_array_equal(got.predictions[:n], want_pred)
  np.testing.assert_array_equal(got.exit_index[n:], -1)


def test_queue_checks_its_count():
  q = adaptive.Queue(exit=2, seq=7, capacity=16, ring={})
  q.reserve(16)
  q.push({'index': 'new ring'}, 10)
  q.pop(4)
  assert (q.head, q.count, q.end, q.ring) == (4, 6, 10, {'index': 'new ring'})
  q.push(q.ring, 10)
  assert q.end == 4  # wrapped around
  with pytest.raises(RuntimeError, match='exit 2 at sequence length 7: pushing up to 1 rows onto 16 .* capacity 16'):
    q.reserve(1)
  with pytest.raises(RuntimeError, match='pushing 1 rows onto 16'):
    q.push(q.ring, 1)
  with pytest.raises(RuntimeError, match='popping 17 rows of 16'):
    q.pop(17)
  with pytest.raises(RuntimeError, match='pop of -1 rows'):
    q.pop(-1)
  assert q.count == 16  # a refused push or pop changes nothing


# A model whose exit pattern is chosen per example, with wide margins (no float rounding between batch shapes can
# flip a decision): token (e, c, k) embeds as +-(1, -1) in dims (2e, 2e + 1) (sign: class c) plus small noise;
# the random layers (init scale) barely move it; head i's pooler is the identity and its classifier reads dims
# (2i, 2i + 1), so head i is confident (logit gap ~6) for examples coded e = i and not (gap < 1) for the others.
CODED = encoder_jax.EncoderConfig(vocab_size=25, hidden_size=16, num_layers=6, num_heads=2, intermediate_size=16,
                                  max_position_embeddings=8)
CODED_LAYOUTS = {4: (1, 2, 3, 4), 5: (1, 2, 3, 4, 5), 6: (1, 2, 3, 4, 5, 6)}  # one layer each: cheap to compile
CODED_SEQS = (4, 6)  # batches come at two sequence lengths in one run
CODED_THRESHOLD = 0.9


@functools.lru_cache(maxsize=1)
def coded_encoder():
  """The random encoder with coded word embeddings (token 1 + 2 (2e + c) + k, k = 0, 1: exit e, class c)."""
  pretrained = encoder_jax.init_params(CODED, jax.random.key(4))
  words = 0.02 * np.asarray(jax.random.normal(jax.random.key(7), (CODED.vocab_size, CODED.hidden_size)))
  for e in range(6):
    for c in range(2):
      words[1 + 2 * (2 * e + c):3 + 2 * (2 * e + c), 2 * e:2 * e + 2] += (1.0, -1.0) if c else (-1.0, 1.0)
  pretrained['embeddings']['word_embeddings']['embedding'] = jnp.asarray(words)
  return pretrained


def coded_model(method, num_exits):
  """(exit config, params, un-jitted all-exit forward) of the coded model with `num_exits` exits."""
  ecfg = exits.ExitConfig(CODED_LAYOUTS[num_exits], 2, pooling='mean')
  pretrained = coded_encoder()

  def head(i):
    kernel = np.zeros((CODED.hidden_size, 2), np.float32)
    kernel[2 * i], kernel[2 * i + 1] = (-1.5, 1.5), (1.5, -1.5)
    return {'pooler': {'kernel': jnp.eye(CODED.hidden_size), 'bias': jnp.zeros(CODED.hidden_size)},
            'classifier': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(2)}}

  if method == 'multi_model':
    params = exits.init_multi_model(jax.random.key(1), CODED, pretrained, ecfg)
    params['models'] = tuple({**m, 'head': head(i)} for i, m in enumerate(params['models']))
    forward = lambda p, b: exits.forward_multi_model(CODED, ecfg, p, b)
  else:
    params = exits.init_exit_model(jax.random.key(1), CODED, pretrained, ecfg)
    params['heads'] = tuple(head(i) for i in range(num_exits))
    forward = lambda p, b: exits.forward(CODED, ecfg, p, b, stop_gradient=False)
  return ecfg, params, forward


def coded_stream(seed, num_exits):
  """A stream of input batches (engine batch 8) and each real example's intended exit, in stream order.

  The pattern and batching depend on the seed: exit probabilities skewed to the last exit, to the first,
  uniform, or Dirichlet(0.3); input batches of 8 with the last one padded (iterate_batches) or of random
  sizes 1..8 with some padding rows; each batch at one of CODED_SEQS, each example of random real length."""
  rng = np.random.default_rng(seed)
  kind = seed % 4
  probs = {0: np.r_[np.full(num_exits - 1, 0.08 / (num_exits - 1)), 0.92],
           1: np.r_[0.9, np.full(num_exits - 1, 0.1 / (num_exits - 1))],
           2: np.full(num_exits, 1 / num_exits)}.get(kind, rng.dirichlet(np.full(num_exits, 0.3)))
  n = int(rng.integers(40, 160))
  target, cls = rng.choice(num_exits, n, p=probs), rng.integers(0, 2, n)
  batches, start = [], 0
  while start < n:
    real = min(n - start, 8 if seed % 2 else int(rng.integers(1, 9)))
    rows = 8 if seed % 2 else min(8, real + int(rng.integers(0, 3)))  # padding rows: copies of the first row
    seq = int(rng.choice(CODED_SEQS))
    mask = (np.arange(seq)[None] < rng.integers(1, seq + 1, real)[:, None]).astype(np.int32)
    group = 2 * target[start:start + real] + cls[start:start + real]
    ids = (1 + 2 * group[:, None] + rng.integers(0, 2, (real, seq))).astype(np.int32) * mask
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], rows - real, 0)])
    batches.append({'input_ids': pad(ids), 'attention_mask': pad(mask), 'token_type_ids': np.zeros((rows, seq),
                    np.int32), 'example_mask': (np.arange(rows) < real).astype(np.float32)})
    start += real
  return batches, target


def offline_logits(forward, params, batches):
  """All exits' logits [E, N, C] of the real rows of `batches`, in order. The rows of one length are computed
  in one call, padded to a multiple of 2048 rows; the forward is not jitted, so JAX's per-operation cache
  serves every model of these shapes (a jitted forward would compile once per model and length)."""
  real = [{key: b[key][b['example_mask'] > 0] for key in adaptive._PAYLOAD_KEYS} for b in batches]
  per_batch = [None] * len(batches)
  for seq in CODED_SEQS:
    ks = [k for k, b in enumerate(real) if b['input_ids'].shape[1] == seq]
    stacked = {key: np.concatenate([real[k][key] for k in ks]) for key in adaptive._PAYLOAD_KEYS}
    pad = -len(stacked['input_ids']) % 2048
    out = np.asarray(forward(params, {key: np.concatenate([v, np.repeat(v[:1], pad, 0)])
                                      for key, v in stacked.items()}))
    starts = np.cumsum([0] + [len(real[k]['input_ids']) for k in ks])
    for k, start, stop in zip(ks, starts, starts[1:]):
      per_batch[k] = out[:, start:stop]
  return np.concatenate(per_batch, 1)


# Seeds of one model share its compiled programs, which take most of the time (early_exit shares sweet's: the
# same network at inference); the offline logits of all seeds come from one call per length.
@pytest.mark.parametrize('method,num_exits,seeds', [
    ('sweet', 4, range(32)), ('sweet', 5, range(32)), ('sweet', 6, range(16)), ('early_exit', 5, range(32, 40)),
    ('multi_model', 4, range(16, 24))])
def test_many_exits_match_offline_sweep(method, num_exits, seeds):
  """Seeded exit patterns x batchings x sequence lengths: every mode answers every example as the offline
  sweep does (exit and prediction), padding rows get -1, and no queue passes its capacity (it would raise)."""
  ecfg, params, forward = coded_model(method, num_exits)
  engine = adaptive.AdaptiveEngine(CODED, ecfg, params, method=method, batch_size=8, buckets=(8,))
  streams = [coded_stream(seed, num_exits) for seed in seeds]
  logits = offline_logits(forward, params, [b for batches, _ in streams for b in batches])
  # One sweep over all seeds' examples (each example's exit depends on its own logits only).
  all_exit, all_pred = map(np.asarray, curves.assign_exits(logits, np.ones(num_exits), CODED_THRESHOLD))
  offsets = np.cumsum([0] + [len(target) for _, target in streams])
  for seed, (batches, target), start, stop in zip(seeds, streams, offsets, offsets[1:]):
    valid = np.concatenate([b['example_mask'] > 0 for b in batches])
    want_exit, want_pred = all_exit[start:stop], all_pred[start:stop]
    np.testing.assert_array_equal(want_exit, target, err_msg=f'seed {seed}: the coded model misses its pattern')
    for mode in adaptive.MODES:
      got = engine.run(batches, CODED_THRESHOLD, mode=mode)
      msg = f'{method} {num_exits} exits, seed {seed}, {mode}'
      np.testing.assert_array_equal(got.exit_index[valid], want_exit, err_msg=msg)
      np.testing.assert_array_equal(got.predictions[valid], want_pred, err_msg=msg)
      np.testing.assert_array_equal(got.exit_index[~valid], -1, err_msg=msg)
      assert got.stats['left'] == np.bincount(want_exit, minlength=num_exits).tolist(), msg


# ----------------------------------------------------------------------------------------------- sweet_eval

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
  import sweet_eval
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
  import sweet_eval
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
