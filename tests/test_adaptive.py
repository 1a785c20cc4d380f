"""The adaptive engine (sweet_jax.adaptive) answers exactly as the offline sweep (curves.assign_exits) says:
same exit and prediction, example for example, for every mode, method, rule and batch size."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from sweet_jax import adaptive, curves, exits

from tests.adaptive_models import CFG, ECFG, N, S, TEMPS


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
  # Host round trips: one per segment call when the host schedules; one per chunk of input batches (all four
  # batches here fit in one chunk, which also flushes) when the device does.
  host = engine.run(batches_of(data, 8), t, mode='host_stream').stats
  assert host['host_round_trips'] == sum(host['calls']) > 4 and stream['host_round_trips'] == 1
  assert stream['host_round_trips_per_1000'] == pytest.approx(1000 / N)
  chunked = adaptive.AdaptiveEngine(CFG, ECFG, params, method='sweet', temperatures=TEMPS, batch_size=8,
                                    buckets=(3, 8), chunk_batches=3)
  assert chunked.run(batches_of(data, 8), t).stats['host_round_trips'] == 2  # batches 1-3, then 4 and the flush
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


def coded_model(method, num_exits, *, exit_layers=None, config=CODED, constants=None):
  """(exit config, params, un-jitted all-exit forward) of the coded model with `num_exits` exits (after
  CODED_LAYOUTS' layers, or exit_layers); `config` may give heads other kinds (whose `constants` the forward
  passes on)."""
  ecfg = exits.ExitConfig(exit_layers or CODED_LAYOUTS[num_exits], 2, pooling='mean')
  pretrained = coded_encoder()

  def head(i):
    kernel = np.zeros((CODED.hidden_size, 2), np.float32)
    kernel[2 * i], kernel[2 * i + 1] = (-1.5, 1.5), (1.5, -1.5)
    return {'pooler': {'kernel': jnp.eye(CODED.hidden_size), 'bias': jnp.zeros(CODED.hidden_size)},
            'classifier': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(2)}}

  if method == 'multi_model':
    params = exits.init_multi_model(jax.random.key(1), CODED, pretrained, ecfg)
    params['models'] = tuple({**m, 'head': head(i)} for i, m in enumerate(params['models']))
    forward = lambda p, b: exits.forward_multi_model(config, ecfg, p, b, constants=constants)
  else:
    params = exits.init_exit_model(jax.random.key(1), CODED, pretrained, ecfg)
    params['heads'] = tuple(head(i) for i in range(num_exits))
    forward = lambda p, b: exits.forward(config, ecfg, p, b, stop_gradient=False, constants=constants)
  return ecfg, params, forward


def coded_stream(seed, num_exits, seqs=CODED_SEQS):
  """A stream of input batches (engine batch 8) and each real example's intended exit, in stream order.

  The pattern and batching depend on the seed: exit probabilities skewed to the last exit, to the first,
  uniform, or Dirichlet(0.3); input batches of 8 with the last one padded (iterate_batches) or of random
  sizes 1..8 with some padding rows; each batch at one of `seqs`, each example of random real length."""
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
    seq = int(rng.choice(seqs))
    mask = (np.arange(seq)[None] < rng.integers(1, seq + 1, real)[:, None]).astype(np.int32)
    group = 2 * target[start:start + real] + cls[start:start + real]
    ids = (1 + 2 * group[:, None] + rng.integers(0, 2, (real, seq))).astype(np.int32) * mask
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], rows - real, 0)])
    batches.append({'input_ids': pad(ids), 'attention_mask': pad(mask), 'token_type_ids': np.zeros((rows, seq),
                    np.int32), 'example_mask': (np.arange(rows) < real).astype(np.float32)})
    start += real
  return batches, target


def offline_logits(forward, params, batches, seqs=CODED_SEQS):
  """All exits' logits [E, N, C] of the real rows of `batches`, in order. The rows of one length are computed
  in one call, padded to a multiple of 2048 rows; the forward is not jitted, so JAX's per-operation cache
  serves every model of these shapes (a jitted forward would compile once per model and length)."""
  real = [{key: b[key][b['example_mask'] > 0] for key in adaptive._PAYLOAD_KEYS} for b in batches]
  per_batch = [None] * len(batches)
  for seq in seqs:
    ks = [k for k, b in enumerate(real) if b['input_ids'].shape[1] == seq]
    stacked = {key: np.concatenate([real[k][key] for k in ks]) for key in adaptive._PAYLOAD_KEYS}
    pad = -len(stacked['input_ids']) % 2048
    out = np.asarray(forward(params, {key: np.concatenate([v, np.repeat(v[:1], pad, 0)])
                                      for key, v in stacked.items()}))
    starts = np.cumsum([0] + [len(real[k]['input_ids']) for k in ks])
    for k, start, stop in zip(ks, starts, starts[1:]):
      per_batch[k] = out[:, start:stop]
  return np.concatenate(per_batch, 1)


def assert_answers(got, valid, want_exit, want_pred, msg):
  """The engine's result answers every real row (valid: bool [rows]) with the offline sweep's exit and
  prediction, and no padding row."""
  np.testing.assert_array_equal(got.exit_index[valid], want_exit, err_msg=msg)
  np.testing.assert_array_equal(got.predictions[valid], want_pred, err_msg=msg)
  np.testing.assert_array_equal(got.exit_index[~valid], -1, err_msg=msg)


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
      assert_answers(got, valid, want_exit, want_pred, msg)
      assert got.stats['left'] == np.bincount(want_exit, minlength=num_exits).tolist(), msg


def test_a_queue_overflow_on_the_device_is_an_error_not_a_silent_overwrite(monkeypatch):
  """A broken schedule (every input batch of a chunk before any queue) pushes more survivors onto the first
  queue than its capacity: the device flags it and the host raises, instead of overwriting unread rows."""
  from sweet_jax import device_stream
  choose = device_stream._choose

  def inputs_first(spec, buckets, queues, ptr, n_inputs, flush):
    return jnp.where(ptr < n_inputs, 0, choose(spec, buckets, queues, ptr, n_inputs, flush))

  monkeypatch.setattr(device_stream, '_choose', inputs_first)
  ecfg, params, _ = coded_model('sweet', 4)
  batches, _ = coded_stream(0, 4)  # skewed to the last exit: most rows stay on
  engine = adaptive.AdaptiveEngine(CODED, ecfg, params, method='sweet', batch_size=5, buckets=(5,))  # a new spec
  with pytest.raises(RuntimeError, match="sequence length \\d+: a push past a queue's capacity"):
    engine.run([{k: v[:5] for k, v in b.items()} for b in batches], CODED_THRESHOLD)
