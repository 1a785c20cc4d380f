"""papa_jax: attention averages, the probe head and its training, the ranking run. Tiny random encoders
(prime sizes catch transposes); everything here runs in seconds on one CPU core."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from papa_jax import averages, probe, ranking

LENGTH = 12  # fixed layout length (even); sentences use [0, 6) and position 11
CFG = encoder_jax.EncoderConfig(vocab_size=53, hidden_size=15, num_layers=2, num_heads=3, intermediate_size=7,
                                max_position_embeddings=17, type_vocab_size=2)


@pytest.fixture(scope='module')
def enc_params():
  return encoder_jax.init_params(CFG, jax.random.key(0), seq=LENGTH)


def make_dataset(n, seed=0, pairs=False):
  """Token batches laid out like papa_layout: [CLS] + words in [0, L/2), (pair: [SEP] B at L/2), [SEP] at L-1."""
  rng = np.random.default_rng(seed)
  half = LENGTH // 2
  ids = np.zeros((n, LENGTH), np.int32)
  mask = np.zeros((n, LENGTH), np.int32)
  types = np.zeros((n, LENGTH), np.int32)
  for i in range(n):
    a = rng.integers(1, half + 1)  # [CLS] plus 0..half-1 words
    ids[i, :a] = rng.integers(3, CFG.vocab_size, a)
    mask[i, :a] = 1
    if pairs:
      b = rng.integers(1, half - 1)
      ids[i, half:half + b] = rng.integers(3, CFG.vocab_size, b)
      mask[i, half:half + b] = 1
      types[i, half + 1:] = 1
    ids[i, -1], mask[i, -1] = 2, 1
  labels = rng.integers(0, 2, n).astype(np.int32)
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': types, 'labels': labels}


def batches_of(data, batch_size, order=None):
  """Padded batches with example_mask, like pipeline.data.iterate_batches."""
  n = len(data['labels'])
  order = np.arange(n) if order is None else order
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    pad = batch_size - len(idx)
    batch = {k: v[idx] for k, v in data.items()}
    batch['example_mask'] = np.ones(len(idx), np.float32)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    yield batch


# ----------------------------------------------------------------------------------------- averages

def brute_force_average(enc_params, data):
  _, att = encoder_jax.encode(CFG, enc_params, data['input_ids'], data['attention_mask'], data['token_type_ids'],
                              return_attention=True)
  a = np.stack([np.asarray(x, np.float64) for x in att], 1)  # [n, layers, heads, L, L]
  m = data['attention_mask'].astype(np.float64)
  outer = m[:, :, None] * m[:, None, :]
  num = (a * outer[:, None, None]).sum(0)
  den = outer.sum(0)
  return np.where(den > 0, num / np.maximum(den, 1), 0.0), den


def test_averages_match_brute_force_including_unobserved_cells(enc_params):
  data = make_dataset(11, pairs=False)
  est = averages.accumulate(CFG, enc_params, batches_of(data, 4), model='tiny', length=LENGTH)
  want, den = brute_force_average(enc_params, data)
  assert est.num_examples == 11  # the padding rows of the last batch are not counted
  np.testing.assert_allclose(est.counts, den)
  np.testing.assert_allclose(est.averages, want, atol=1e-6)
  # Single sentences never use the second half except the final [SEP]: those cells were never observed.
  assert (den[:, LENGTH // 2:-1] == 0).all()
  assert (est.averages[:, :, :, LENGTH // 2:-1] == 0).all()
  assert (est.averages[:, :, LENGTH // 2:-1, :] == 0).all()
  # The slots no example occupied, and test-time tokens (pairs use the second half) landing in them.
  unused = np.flatnonzero(~data['attention_mask'].any(0))
  np.testing.assert_array_equal(est.unoccupied_slots, unused)
  assert unused.tolist() == list(range(LENGTH // 2, LENGTH - 1))
  pairs = make_dataset(5, seed=9, pairs=True)['attention_mask']
  cov = averages.slot_coverage(est, pairs)
  per_example = [sum(int(row[i]) for i in unused) for row in pairs]
  assert cov == {'unoccupied_slots': unused.tolist(), 'num_unoccupied_slots': len(unused),
                 'eval_tokens_in_unoccupied_slots': sum(per_example),
                 'eval_examples_with_tokens_in_unoccupied_slots': sum(n > 0 for n in per_example)}
  assert cov['eval_tokens_in_unoccupied_slots'] > 0
  # Rows are not renormalised: a row mixes examples of different lengths, so it need not sum to 1.
  rows = est.averages[:, :, 0, :].sum(-1)
  assert not np.allclose(rows, 1.0)


def test_extending_in_two_halves_equals_one_pass(enc_params):
  data = make_dataset(10, seed=1, pairs=True)
  first = {k: v[:6] for k, v in data.items()}
  second = {k: v[6:] for k, v in data.items()}
  one = averages.accumulate(CFG, enc_params, batches_of(data, 4))
  two = averages.accumulate(CFG, enc_params, batches_of(first, 4))
  two = averages.accumulate(CFG, enc_params, batches_of(second, 4), two)
  assert two.num_examples == one.num_examples == 10
  np.testing.assert_allclose(two.sums, one.sums, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(two.counts, one.counts)
  np.testing.assert_allclose(two.averages, one.averages, atol=1e-6)


def test_save_load_round_trip(enc_params, tmp_path):
  est = averages.accumulate(CFG, enc_params, batches_of(make_dataset(5), 4), model='tiny-bert', length=LENGTH)
  path = tmp_path / 'averages.npz'
  averages.save(path, est)
  back = averages.load(path)  # allow_pickle=False inside
  np.testing.assert_array_equal(back.sums, est.sums)
  np.testing.assert_array_equal(back.counts, est.counts)
  assert (back.num_examples, back.model, back.length) == (5, 'tiny-bert', LENGTH)
  with np.load(path, allow_pickle=False) as f:
    np.testing.assert_array_equal(f['averages'], est.averages)


# --------------------------------------------------------------------------------------------- probe

def test_position_weights_are_multiplied_by_the_mask():
  head = probe.init_head(jax.random.key(1), CFG.num_layers, CFG.hidden_size, LENGTH, 2)
  chex.assert_trees_all_close(head['position_weights'], jnp.full((3, LENGTH), 1 / LENGTH))
  h = jax.random.normal(jax.random.key(2), (2, 3, LENGTH, CFG.hidden_size))
  mask = jnp.array([[1] * 4 + [0] * (LENGTH - 4), [1] * LENGTH], jnp.float32)
  w = jax.random.normal(jax.random.key(3), (3, LENGTH))
  pooled = probe.pool(w, h, mask)
  chex.assert_shape(pooled, (2, 3 * CFG.hidden_size))
  want = np.einsum('lt,blth->blh', np.asarray(w)[:, :4], np.asarray(h)[:1, :, :4]).reshape(1, -1)
  np.testing.assert_allclose(pooled[:1], want, rtol=1e-5, atol=1e-5)  # padded positions do not count...
  noisy = h.at[0, :, 4:].set(1e3)
  np.testing.assert_allclose(probe.pool(w, noisy, mask)[0], pooled[0], rtol=1e-5, atol=1e-5)
  # ... and there is no renormalisation by the number of real tokens.
  ones = probe.pool(jnp.ones((3, LENGTH)), jnp.ones_like(h), mask)
  np.testing.assert_allclose(ones[0], 4.0)
  np.testing.assert_allclose(ones[1], float(LENGTH))


def test_only_the_head_trains(enc_params):
  data = make_dataset(8, seed=2)
  head = probe.init_head(jax.random.key(1), CFG.num_layers, CFG.hidden_size, LENGTH, 2)
  frozen = {'encoder': enc_params, 'constants': None}
  loss_fn, predict_fn = probe.online_fns(CFG, 0.1)
  batch = next(batches_of(data, 8))
  grads = probe.gradients(loss_fn, head, frozen, batch, jax.random.key(0))
  chex.assert_trees_all_equal_structs(grads, head)  # the gradient tree holds head params only
  # Even a caller that differentiates the frozen inputs gets exactly zero for the encoder (stop_gradient),
  # while the same loss does depend on the encoder's weights.
  loss_of_encoder = lambda e: loss_fn(head, {'encoder': e, 'constants': None}, batch, None)[0]
  value, encoder_grads = jax.jit(jax.value_and_grad(loss_of_encoder))(enc_params)
  assert not any(np.asarray(g).any() for g in jax.tree.leaves(encoder_grads))
  nudged = jax.tree.map(lambda x: x * 1.1, enc_params)
  assert abs(jax.jit(loss_of_encoder)(nudged) - value) > 1e-6
  trained, history = probe.fit(head, frozen, loss_fn, lambda e: batches_of(data, 4), learning_rate=1e-2,
                               num_epochs=2, seed=0)
  assert history[-1]['steps'] == 4
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), trained, head)
  assert all(jax.tree.leaves(changed))


def test_cached_features_give_the_online_logits(enc_params, tmp_path):
  data = make_dataset(7, seed=3)
  head = probe.init_head(jax.random.key(4), CFG.num_layers, CFG.hidden_size, LENGTH, 2)
  head['position_weights'] = jax.random.normal(jax.random.key(5), (3, LENGTH))  # weights on unused slots too
  cache = probe.cache_features(CFG, enc_params, batches_of(data, 4), dtype=np.float32, path=tmp_path / 'h.npy')
  assert len(cache) == 7 and isinstance(cache.hiddens, np.memmap)
  np.testing.assert_array_equal(cache.positions, np.r_[0:LENGTH // 2, LENGTH - 1])  # only used positions
  _, online_predict = probe.online_fns(CFG, 0.1)
  _, cached_predict = probe.cached_fns(0.1)
  want = online_predict(head, {'encoder': enc_params, 'constants': None}, next(batches_of(data, 7)))
  got = cached_predict(head, {'positions': cache.positions}, next(cache.batches(7)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  half = probe.cache_features(CFG, enc_params, batches_of(data, 4))  # float16 in memory: close enough
  np.testing.assert_allclose(cached_predict(head, {'positions': half.positions}, next(half.batches(7))), want,
                             rtol=1e-2, atol=1e-3)
  acc = probe.evaluate(head, {'positions': cache.positions}, cached_predict, cache.batches(4))
  assert acc['num_examples'] == 7


def test_all_constant_probe_runs_and_differs_from_baseline(enc_params):
  data = make_dataset(9, seed=4, pairs=True)
  est = averages.accumulate(CFG, enc_params, batches_of(data, 5))
  constants = jnp.asarray(est.averages)
  base = probe.cache_features(CFG, enc_params, batches_of(data, 5), dtype=np.float32)
  const_cfg = CFG.with_heads('constant', 'all')
  const = probe.cache_features(const_cfg, enc_params, batches_of(data, 5), constants=constants, dtype=np.float32)
  np.testing.assert_array_equal(base.hiddens[:, 0], const.hiddens[:, 0])  # the embeddings are untouched
  assert np.abs(base.hiddens[:, -1] - const.hiddens[:, -1]).max() > 1e-3
  loss_fn, predict_fn = probe.cached_fns(0.1)
  head = probe.init_head(jax.random.key(1), CFG.num_layers, CFG.hidden_size, LENGTH, 2)
  frozen = {'positions': const.positions}
  trained, history = probe.fit(head, frozen, loss_fn, lambda e: const.batches(4, seed=0, epoch=e, shuffle=True),
                               learning_rate=1e-2, num_epochs=2,
                               evaluate=lambda p, e: probe.evaluate(p, frozen, predict_fn, const.batches(4)))
  assert np.isfinite(history[-1]['train_loss'])
  # evaluate() against a count by hand: the 3 rows padding its last batch (labels 0) must not count.
  logits = np.asarray(predict_fn(trained, frozen, next(const.batches(9))))
  want = (logits.argmax(-1) == data['labels']).mean()
  assert history[-1] == {**history[-1], 'accuracy': want, 'num_examples': 9}


def test_params_save_load_round_trip(tmp_path):
  head = probe.init_head(jax.random.key(1), CFG.num_layers, CFG.hidden_size, LENGTH, 3)
  probe.save_params(tmp_path / 'head.npz', head, k=4, heads=np.array([[0, 1], [1, 2]]))
  back, meta = probe.load_params(tmp_path / 'head.npz')
  chex.assert_trees_all_equal(back, jax.device_get(head))
  assert meta['k'] == 4 and meta['heads'].tolist() == [[0, 1], [1, 2]]


# ------------------------------------------------------------------------------------------- ranking

def _rank_by_hand(lambdas):
  """Selection by hand: repeatedly take the smallest remaining lambda, the first (layer, head) among ties."""
  left = {(l, h): float(lambdas[l][h]) for l in range(len(lambdas)) for h in range(len(lambdas[0]))}
  order = []
  while left:
    best = None
    for head, value in left.items():  # dict order is (layer, head) order
      if best is None or value < left[best]:
        best = head
    order.append(best)
    del left[best]
  return order


def test_rank_heads_against_selection_by_hand():
  """One global order across layers, ascending, ties in (layer, head) order, on random lambdas with ties."""
  rng = np.random.default_rng(7)
  for shape in ((2, 3), (4, 5), (1, 7)):
    lam = rng.integers(-3, 4, shape).astype(np.float32) / 2  # few distinct values: many ties
    assert ranking.rank_heads(lam) == _rank_by_hand(lam)
    lam = rng.standard_normal(shape).astype(np.float32)
    assert ranking.rank_heads(lam) == _rank_by_hand(lam)


def test_rank_heads_orders_globally_by_lambda():
  lam = np.array([[0.3, -1.0, 0.0], [-2.0, 0.5, 0.0]])
  order = ranking.rank_heads(lam)
  assert order == [(1, 0), (0, 1), (0, 2), (1, 2), (0, 0), (1, 1)]  # ties keep (layer, head) order
  assert ranking.constant_heads(order, 2) == [(1, 0), (0, 1)]
  assert ranking.constant_heads(order, 0) == []
  assert [ranking.resolve_k(k, 6) for k in (0, 'half', 'all', 5)] == [0, 3, 6, 5]
  with pytest.raises(ValueError):
    ranking.resolve_k(7, 6)


def test_ranking_run_moves_lambdas_and_ranks_by_them(enc_params):
  data = make_dataset(8, seed=5, pairs=True)
  est = averages.accumulate(CFG, enc_params, batches_of(data, 4))
  lambdas, head, history = ranking.train_lambdas(
      CFG, enc_params, est.averages, 2, lambda e: batches_of(data, 4), length=LENGTH, learning_rate=0.05,
      num_epochs=2, max_steps=3, dropout=0.0)
  assert history[-1]['steps'] == 3
  chex.assert_shape(lambdas, (CFG.num_layers, CFG.num_heads))
  assert (lambdas != 0).all()  # every lambda got a gradient and moved
  assert ranking.rank_heads(lambdas) == _rank_by_hand(lambdas)
