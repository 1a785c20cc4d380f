"""SWEET x PAPA (issue 25): constant heads in the early segments.

- The analytic FLOPs of a layer (sweet_jax.curves) equal the matrix products its forward really runs, counted
  from the dot_generals of the jaxpr (not from curves' formulas), for all-softmax, all-constant and mixed
  layers at two sequence lengths and in both kernel forms.
- The adaptive engine with constant heads answers every example as the offline sweep does.
- The study runner's grid and report (experiments/sweet_papa_study.py).
"""

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from experiments import budgets, sweet_papa_study as sps
from papa_jax import averages
from sweet_jax import adaptive, curves, exits
from tests.test_adaptive import CODED, CODED_THRESHOLD, assert_answers, coded_model, coded_stream, offline_logits
from tests.test_study_runner import _parse

# ------------------------------------------------------------------------------------ FLOPs = dot_generals

# Prime-ish sizes catch a transposed or dropped factor: head_dim 5, 7 heads, intermediate 29.
TINY = encoder_jax.EncoderConfig(vocab_size=31, hidden_size=35, num_layers=1, num_heads=7, intermediate_size=29,
                                 max_position_embeddings=40)
BATCH = 3


def dot_general_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr and its sub-jaxprs (pjit, custom_jvp, ...): for
  lhs [batch, lhs free, contracting] and rhs [batch, contracting, rhs free], 2 * |lhs| * |rhs free|.
  Control flow is refused: a branch (lax.platform_dependent under kernels='auto') would count twice."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    assert name not in ('cond', 'while', 'scan'), f'{name} in the layer: its branches would be miscounted'
    if name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      rhs_free = [s for j, s in enumerate(rhs) if j not in rhs_contract and j not in rhs_batch]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)
  for sub in jax.extend.core.subjaxprs(jaxpr):
    total += dot_general_flops(sub)
  return total


def one_layer_dot_flops(config, seq: int) -> int:
  """The matrix-product FLOPs per example of layer 0's inference forward on a batch of BATCH."""
  params = encoder_jax.init_params(config, jax.random.key(0))
  hidden = jnp.zeros((BATCH, seq, config.hidden_size))
  mask = jnp.ones((BATCH, seq), jnp.int32)
  constants = jnp.full((1, config.num_heads, seq, seq), 1.0 / seq)
  gates = jnp.zeros((1, config.num_heads))
  fn = lambda p, x, m, c, g: encoder_jax.run_layers(config, p, x, m, 0, 1, constants=c, gates=g)
  closed = jax.make_jaxpr(fn)(params, hidden, mask, constants, gates)
  total = dot_general_flops(closed.jaxpr)
  assert total % BATCH == 0
  return total // BATCH


def head_sets():
  """(name, kinds of the layer's heads): all softmax, all constant, seeded random mixes (one input-dependent
  head, one constant head, about half), and one with PAPA's gated 'mixed' heads too."""
  n = TINY.num_heads
  rng = np.random.default_rng(25)
  out = [('softmax', ('softmax',) * n), ('constant', ('constant',) * n)]
  for name, n_const in (('one_dynamic', n - 1), ('one_constant', 1), ('half', n // 2)):
    chosen = set(rng.choice(n, n_const, replace=False).tolist())
    out.append((name, tuple('constant' if h in chosen else 'softmax' for h in range(n))))
  out.append(('gated', tuple(rng.choice(['softmax', 'constant', 'mixed'], n).tolist())))
  return out


@pytest.mark.parametrize('kernels', ['cpu_tuned', 'portable'])
@pytest.mark.parametrize('name,kinds', head_sets())
def test_layer_flops_model_counts_the_matmuls_the_layer_runs(name, kinds, kernels):
  config = TINY.replace(head_kinds=(kinds,), kernels=kernels)
  for seq in (11, 17):
    assert curves.layer_matmul_flops(config, 0, seq) == one_layer_dot_flops(config, seq), (name, seq)


def test_constant_heads_save_their_query_key_and_score_flops():
  """What a constant head saves is what the model says: its Q and K columns, its scores and softmax; what it
  adds is its normaliser product and O(seq x head_dim) elementwise work. Independent of curves: from the
  dot_generals and the configuration's sizes."""
  seq, d, h = 13, TINY.head_dim, TINY.hidden_size
  softmax = TINY.replace(head_kinds=(('softmax',) * TINY.num_heads,), kernels='cpu_tuned')
  one = softmax.with_heads('constant', [(0, 3)])
  saved = one_layer_dot_flops(softmax, seq) - one_layer_dot_flops(one, seq)
  assert saved == 2 * seq * h * 2 * d + 2 * seq * seq * d - 2 * seq * seq  # Q, K columns; scores; + normaliser
  assert curves.layer_flops(softmax, 0, seq) - curves.layer_flops(one, 0, seq) == (
      saved + 2 * seq * d + curves.ELEMENTWISE_FLOPS * seq * (seq - d))  # and their biases and softmax


# ------------------------------------------------------------------------- engine = offline sweep, constants


CODED_L = 6  # PAPA's fixed layout length: every batch of these tests comes at it
CODED_EXITS = (1, 2, 4, 6)
TOLERANCE = 1e-5  # engine logits against the offline forward's: float32 rounding in other batch shapes


def structured(params, qk: float = 20.0, v: float = 5.0):
  """The coded model with attention that matters: query and key kernels x qk (at init scale every head
  attends almost uniformly, so every head's averages would be the same matrix), value and output kernels x v
  (so attention moves the logits). The coded exit pattern survives (asserted by the test)."""
  enc = dict(params['encoder'])
  for name in [n for n in enc if n.startswith('layers_')]:
    layer = dict(enc[name])
    for w, scale in (('query', qk), ('key', qk), ('value', v), ('attention_output', v)):
      layer[w] = {**layer[w], 'kernel': layer[w]['kernel'] * scale}
    enc[name] = layer
  return {**params, 'encoder': enc}


def coded_constants(encoder_params):
  """Real PAPA averages of the encoder, [layers, heads, L, L]: its softmax attention averaged over 64 random
  token sequences of random real lengths at L (papa_jax.averages, as PAPA's stage 1 makes them)."""
  rng = np.random.default_rng(11)
  lens = rng.integers(1, CODED_L + 1, 64)
  mask = (np.arange(CODED_L)[None] < lens[:, None]).astype(np.int32)
  ids = rng.integers(1, CODED.vocab_size, mask.shape).astype(np.int32) * mask
  batches = [{'input_ids': ids[i:i + 16], 'attention_mask': mask[i:i + 16], 'token_type_ids': 0 * ids[i:i + 16]}
             for i in range(0, 64, 16)]
  consts = averages.accumulate(CODED, encoder_params, batches, length=CODED_L).averages
  assert consts.shape == (CODED.num_layers, CODED.num_heads, CODED_L, CODED_L)
  return consts


def mixed_heads_within(layers: int, seed: int) -> list[tuple[int, int]]:
  """A seeded random set of constant heads in layers 0..layers-1 with at least one layer mixed (some heads
  constant, some not)."""
  rng = np.random.default_rng(seed)
  while True:
    chosen = rng.random((layers, CODED.num_heads)) < 0.5
    if (chosen.any(1) & ~chosen.all(1)).any():
      return [(int(l), int(h)) for l, h in zip(*np.nonzero(chosen))]


@pytest.mark.parametrize('heads', ['first_segment', 'mixed'])
def test_engine_with_constant_heads_matches_offline_sweep(heads):
  """SWEET with constant heads (the first segment all constant, or a seeded random mix within the first three
  segments), exits after layers 1, 2, 4, 6: every engine mode answers every example as the offline sweep of
  the all-exit forward does (exit, prediction and the logits it left with), at several thresholds, over seeded
  skewed exit patterns."""
  chosen = ([(0, h) for h in range(CODED.num_heads)] if heads == 'first_segment'
            else mixed_heads_within(CODED_EXITS[2], seed=3))
  config = CODED.with_heads('constant', chosen)
  num_exits = len(CODED_EXITS)
  ecfg, params, _ = coded_model('sweet', num_exits, exit_layers=CODED_EXITS, config=config)
  params = structured(params)
  constants = coded_constants(params['encoder'])
  engine = adaptive.AdaptiveEngine(config, ecfg, params, method='sweet', batch_size=8, buckets=(8,),
                                   constants=constants)
  seeds = range(8)  # skewed to the last exit, to the first, uniform, Dirichlet; both batchings
  streams = [coded_stream(seed, num_exits, seqs=(CODED_L,)) for seed in seeds]
  stream = [b for batches, _ in streams for b in batches]
  offline = lambda c: offline_logits(lambda p, b: exits.forward(config, ecfg, p, b, stop_gradient=False,
                                                                constants=c), params, stream, seqs=(CODED_L,))
  logits = offline(constants)
  # The check can see the constants: another head's matrices move the logits far past the tolerance.
  assert np.abs(offline(constants[:, ::-1]) - logits).max() > 100 * TOLERANCE
  offsets = np.cumsum([0] + [len(target) for _, target in streams])
  for threshold in (0.0, CODED_THRESHOLD, 0.999, 1.5):  # all first; the coded pattern; stricter; all last
    all_exit, all_pred = map(np.asarray, curves.assign_exits(logits, np.ones(num_exits), threshold))
    for seed, (batches, target), start, stop in zip(seeds, streams, offsets, offsets[1:]):
      valid = np.concatenate([b['example_mask'] > 0 for b in batches])
      want_exit, want_pred = all_exit[start:stop], all_pred[start:stop]
      if threshold == CODED_THRESHOLD:
        np.testing.assert_array_equal(want_exit, target, err_msg=f'seed {seed}: the coded model misses its pattern')
      for mode in adaptive.MODES:
        got = engine.run(batches, threshold, mode=mode)
        msg = f'{heads}: threshold {threshold}, seed {seed}, {mode}'
        assert_answers(got, valid, want_exit, want_pred, msg)
        at_exit = logits[want_exit, start + np.arange(stop - start)]
        np.testing.assert_allclose(got.logits[valid], at_exit, rtol=TOLERANCE, atol=TOLERANCE, err_msg=msg)


# --------------------------------------------------------------------------------- the 'none' variant's layout

def test_a_model_without_constants_can_take_papas_layout():
  """model.layout_length lays a model without constant heads out as its constant-head variants (the study's
  'none' reads the same tokens); with constants their L rules, and a different layout_length is refused;
  and the run identity tells the two layouts apart."""
  import ml_collections
  from drivers import methods
  from pipeline import fingerprint
  model = lambda n: ml_collections.ConfigDict({'layout_length': n, 'checkpoint': 'minilm', 'exit_layers': (1,)})
  consts = np.zeros((6, 12, 32, 32), np.float32)
  assert methods.layout_length(model(0), None) is None
  assert methods.layout_length(model(64), None) == 64
  assert methods.layout_length(model(0), consts) == methods.layout_length(model(32), consts) == 32
  with pytest.raises(ValueError, match='model.layout_length is 64'):
    methods.layout_length(model(64), consts)
  run = lambda n: ml_collections.ConfigDict({'method': 'sweet', 'model': model(n), 'train': {'dtype': 'float32'}})
  assert fingerprint.of_model(run(64)) != fingerprint.of_model(run(0))
  assert 'layout_length' not in fingerprint.of_model(run(0))  # identities of earlier runs are unchanged


def test_none_and_constant_variants_encode_the_same_tokens(tmp_path):
  """Built end to end (drivers.methods.build on a tiny checkpoint): 'none' with model.layout_length = L and
  a constant-head model with L x L constants turn the same texts into the same token batch."""
  from configs import sweet_papa_demo
  from drivers import methods
  from tests.tiny_checkpoint import write_checkpoint
  write_checkpoint(tmp_path / 'ckpt')
  est = averages.AttentionSums.zeros(2, 3, 12)
  est.counts[:] = 1.0
  averages.save(tmp_path / 'avg.npz', est)
  config = sweet_papa_demo.get_config()
  config.model.checkpoint, config.model.exit_layers = str(tmp_path / 'ckpt'), (1, 2)
  config.model.constants_path = str(tmp_path / 'avg.npz')
  texts = ['good plot', 'a dull film']
  constant = methods.build(config, 2).encode_fn(texts, None)
  config.model.constant_heads, config.model.layout_length = '', 12
  none = methods.build(config, 2)
  assert none.constants is None and not none.encoder_config.uses_constants()
  got = none.encode_fn(texts, None)
  assert got['input_ids'].shape == (2, 12) and got['input_ids'][0, -1] == 102  # PAPA layout: [SEP] at L-1
  for key in constant:
    np.testing.assert_array_equal(got[key], constant[key], err_msg=key)


# ------------------------------------------------------------------------------------------ the study runner


LENGTHS = {'movie_reviews': 64, 'tweets': 64, 'bbc_news': 128}
RANKING = [(3, 1), (0, 7), (1, 0), (0, 2), (0, 11), (5, 5), (0, 0), (0, 5), (0, 9), (0, 1), (0, 3), (0, 4), (0, 6),
           (0, 8), (0, 10)]  # a ranking's head: layer 0 heads in the order 7, 2, 11, 0, 5, 9, 1, ...


def grid(rankings=None):
  return sps.cells(LENGTHS, {t: RANKING for t in sps.TASKS} if rankings is None else rankings, sps.minilm_config(),
                   'runs/w')


def test_grid_names_lengths_heads_and_one_test_set_per_task():
  cells = grid()
  names = [c.name for c in cells]
  assert len(cells) == 59 == len(set(names))  # 2 tasks x (1 + 2 x 4 x 3) + (1 + 2 x 4)
  assert names[0] == 'movie_reviews_papa' and names[1] == 'movie_reviews_sweet_none_s42'
  assert 'bbc_news_early_exit_rank_h_s42' in names and 'bbc_news_sweet_none_s43' not in names
  from drivers import methods
  for task in sps.TASKS:
    exit_cells = [c for c in cells if c.labels['task'] == task and c.labels['kind'] == 'exit']
    configs = [_parse(c.steps[0].argv) for c in exit_cells]
    for c, cfg in zip(exit_cells, configs):
      assert c.steps[1].argv[1:] == c.steps[0].argv[1:]  # eval sees the same config
      assert cfg.model.layout_length == cfg.data.max_seq_length == LENGTHS[task], c.name  # one layout, 'none' too
      assert cfg.method == c.labels['method'] and tuple(cfg.model.exit_layers) == (1, 2, 4, 6)
      heads = methods.constant_heads_of(cfg.model.constant_heads, sps.minilm_config(), _ExitLayers())
      want = {'none': [], 'first_all': [(0, h) for h in range(12)], 'rank_q': [(0, 7), (0, 2), (0, 11)],
              'rank_h': [(0, 7), (0, 2), (0, 11), (0, 0), (0, 5), (0, 9)]}[c.labels['variant']]
      assert heads == want, c.name
      if want:
        assert cfg.model.constants_path == f'runs/w/{task}_papa/papa/averages.npz'
    # Every variant of a task is scored on one test set: the fields that make the eval split are the same.
    test_set = lambda cfg: {k: cfg.data.get(k) for k in ('source', 'seed', 'eval_size', 'max_eval_samples')}
    assert all(test_set(cfg) == test_set(configs[0]) for cfg in configs)
  papa = _parse(cells[0].steps[0].argv)
  assert papa.method == 'papa' and papa.papa.length == 64 and tuple(papa.papa.ks) == (0,)
  # Without a ranking the rank cells wait, and are marked so.
  waiting = [c for c in grid({}) if c.labels.get('waiting')]
  assert len(waiting) == 2 * 2 * 3 * 2 + 2 * 2 and all(c.labels['variant'].startswith('rank') for c in waiting)


class _ExitLayers:
  exit_layers = (1, 2, 4, 6)


def test_rank_variants_cut_the_first_exit_flops_by_a_quarter_and_a_half_of_first_all():
  """k from the FLOPs model: the rank variants' first-exit saving is 1/4 and 1/2 of first_all's (3 and 6 of
  MiniLM's 12 first-segment heads), taking the ranking's first-segment heads in its order."""
  cfg = sps.minilm_config()
  for length in (64, 128):
    base = sps.first_exit_flops(cfg, [], length)
    most = base - sps.first_exit_flops(cfg, [(0, h) for h in range(12)], length)
    for variant, target in sps.RANK_TARGETS.items():
      heads = sps.ranked_heads(RANKING, cfg, target, length)
      saved = base - sps.first_exit_flops(cfg, heads, length)
      assert saved == pytest.approx(target * most, rel=1e-12) and len(heads) == 12 * target
      assert heads == [h for h in RANKING if h[0] == 0][:len(heads)]


def test_the_averages_come_from_the_training_split(tmp_path):
  """The PAPA cell's data fields and an exit cell's, on one local source: the PAPA cell's training split (what
  its stage 1 averages over) shares no example with the exit cells' test split, which is the same for both."""
  from pipeline import data
  from tests.data_helpers import ids_of, numbered, write_csv
  path = write_csv(tmp_path / 'all.csv', ['text', 'label'], numbered(700))
  for task in sps.TASKS:
    cells = [c for c in grid() if c.labels['task'] == task]
    splits = []
    for cell in (cells[0], cells[1]):  # the PAPA cell, an exit cell
      cfg = _parse(cell.steps[0].argv).data
      cfg.source, cfg.train_path = 'files', str(path)
      splits.append(data.load_splits(cfg))
    papa, exit_ = splits
    assert ids_of(papa.eval) == ids_of(exit_.eval)
    assert not set(ids_of(papa.train)) & set(ids_of(exit_.eval)), task


def _variant_run(tmp_path, method, variant, seed, right, rng, test_set='t'):
  """An exit cell's raw JSON with stored outputs: 300 examples, exits 1/2/4/6; exit e right on right[e] of
  them; FLOPs per exit in sixths of the full model (a constant-head variant's exits slightly cheaper)."""
  from drivers.predictions import Predictions
  n = 300
  labels = rng.integers(0, 2, n).astype(np.int8)
  hit = np.stack([rng.permutation(n) < r for r in right])
  pred = np.where(hit, labels, 1 - labels).astype(np.int8)
  conf = rng.uniform(0.5, 1.0, (4, n)).astype(np.float32)
  layers = np.array([1, 2, 4, 6], np.int32)
  flops = layers - (0.2 if variant != 'none' else 0.0)
  p = Predictions(pred, conf, labels, np.arange(n, dtype=np.int32), layers, 'exit_layer', test_set, method=method,
                  layers_run=layers, exit_flops=np.repeat(flops[:, None], n, 1), full_flops=np.full(n, 6.0))
  path = tmp_path / f'{method}_{variant}_{seed}.predictions.npz'
  p.save(str(path))
  points = [{'threshold': t, 'accuracy': a, 'layer_fraction': f, 'flops_fraction': f, 'measured_speedup': 1 / f}
            for t, a, f in ((0.5, right[0] / n, flops[0] / 6), (1.0, right[-1] / n, 1.0))]
  return {'cell': f'movie_reviews_{method}_{variant}_s{seed}', 'per_exit_accuracy': list(hit.mean(1)),
          'exit_layers': [1, 2, 4, 6], 'eval_examples': n, 'hashes': {'test_set_sha256': test_set},
          'labels': {'kind': 'exit', 'task': 'movie_reviews', 'method': method, 'variant': variant, 'seed': seed,
                     'length': 64}, 'curve': {'points': points}, 'attachments': {'.predictions.npz': str(path)}}, p


def test_report_claims_tables_and_figure_on_synthetic_runs(tmp_path):
  from drivers import predictions
  rng = np.random.default_rng(0)
  made = {(m, v, s): _variant_run(tmp_path, m, v, s, (210 if v == 'none' else 180, 240, 250, 255), rng)
          for m in sps.METHODS for v in ('none', 'first_all') for s in (42, 43)}
  runs = [r for r, _ in made.values()]
  lines = sps.claims(runs)
  # Per method: first_all against none at its first exit, at none's first-exit FLOPs and 3 FLOPs budgets
  # (paired), and at 3 measured speedups (from the curves).
  assert len(lines) == 2 * (1 + 1 + 3 + 3)
  # The fast end: none's first exit costs 1/6 of the FLOPs, where none scores its first exit's 210 of 300 and
  # first_all (first exit at 0.8/6) mixes its first exit with later ones.
  edge = next(l for l in lines
              if "SWEET: first_all is more accurate than none at 0.167 of the FLOPs (none's first exit)" in l)
  dense = lambda s: predictions.dense_curve(made['sweet', 'first_all', s][1])
  want = np.mean([budgets.accuracy_at(dense(s), 'flops_fraction', 1 / 6) - 210 / 300 for s in (42, 43)])
  assert f'({100 * want:+.1f} points, 95% interval' in edge and 'paired bootstrap' in edge
  cost = next(l for l in lines if "SWEET: none's first exit is more accurate than first_all's" in l)
  assert '(+10.0 points, 95% interval' in cost and 'n = 300 x 2' in cost  # 210 against 180 right of 300
  first = next(l for l in lines if 'SWEET: first_all is more accurate than none at 0.25 of the FLOPs' in l)
  assert 'paired bootstrap' in first and 'n = 300 x 2' in first
  # By hand: the paired effect is the mean over seeds of the dense curves' interpolated accuracy differences.
  want = np.mean([budgets.accuracy_at(predictions.dense_curve(made['sweet', 'first_all', s][1]), 'flops_fraction', 0.25)
                  - budgets.accuracy_at(predictions.dense_curve(made['sweet', 'none', s][1]), 'flops_fraction', 0.25)
                  for s in (42, 43)])
  assert f'({100 * want:+.1f} points, 95% interval' in first
  # At a matched measured speedup, paired too: the effect is the difference of each run's timed curve
  # interpolated at 1 / 1.5 of the full model's time (its two timed points' summary accuracies).
  at = lambda v: [budgets.accuracy_at(made['sweet', v, s][0]['curve']['points'], 'time_fraction', 1 / 1.5)
                  for s in (42, 43)]
  fast = next(l for l in lines if 'SWEET: first_all is more accurate than none at a matched measured 1.5x' in l)
  assert f'({100 * np.mean(np.subtract(at("first_all"), at("none"))):+.1f} points, 95% interval' in fast
  assert 'paired bootstrap' in fast and 'n = 300 x 2' in fast
  # A timed curve the stored outputs do not reproduce is refused, not read.
  bad = [dict(r, curve={'points': [dict(q, accuracy=q['accuracy'] - 0.1) for q in r['curve']['points']]})
         if r['labels']['variant'] == 'none' else r for r in runs]
  with pytest.raises(ValueError, match='timed curve'):
    sps.claims(bad)
  body = dict(sps.sections(runs, str(tmp_path), sps.minilm_config()))
  table = body['movie_reviews (L = 64)']
  assert '| sweet | first_all | 2 |' in table.replace('  ', ' ') and 'FLOPs 0.25' in table and '2x measured' in table
  assert '| FLOPs 0.167 | FLOPs 0.25 |' in table
  assert (tmp_path / 'movie_reviews.png').stat().st_size > 0
  assert 'every cell scored on one test set' in body['Test sets']
  other = dict(runs[0], hashes={'test_set_sha256': 'another'})
  assert '**test sets differ**' in sps.test_set_check([other] + runs[1:])
  share = body['FLOPs share of attention at each length (MiniLM, sweet_jax.curves)']
  assert '| 64 | 17.5% | 17.5% | 4.4% | 8.7% |' in share  # all-constant layer 0 skips 17.5% of its FLOPs at L = 64


# ------------------------------------------------------------------------- one reference for every variant

def test_the_full_model_reference_is_the_softmax_model_for_flops_and_timing():
  """Fractions and measured speedups of a model with constant heads are taken against the model without
  them: curves.full_model_flops is the softmax model's, and the engine's timed full program runs exactly the
  softmax model's matrix products (counted in its jaxpr), whatever the exit model's head kinds."""
  from sweet_jax import engine_programs as programs
  config = TINY.replace(num_layers=3, kernels='cpu_tuned')
  const = config.with_heads('constant', [(0, h) for h in range(config.num_heads)] + [(1, 2)])
  ecfg = exits.ExitConfig((1, 3), 2, pooling='mean')
  seq = 11
  assert curves.full_model_flops(const, ecfg, seq) == curves.full_model_flops(config, ecfg, seq)
  # Every example at the last exit: the constant model's fraction is below 1 by exactly its saving.
  _, fraction = curves.cost_fractions(np.array([1]), encoder_config=const, exit_config=ecfg, method='sweet',
                                      seq_lengths=seq)
  saving = sum(curves.layer_flops(config, l, seq) - curves.layer_flops(const, l, seq) for l in range(3))
  head = curves.head_flops(config, ecfg, seq)  # the first exit's head, passed on the way
  assert fraction == pytest.approx(1 + (head - saving) / curves.full_model_flops(config, ecfg, seq), rel=1e-12)
  params = exits.init_exit_model(jax.random.key(1), config, encoder_jax.init_params(config, jax.random.key(0)), ecfg)
  payload = {'input_ids': jnp.ones((BATCH, seq), jnp.int32), 'attention_mask': jnp.ones((BATCH, seq), jnp.int32),
             'token_type_ids': jnp.zeros((BATCH, seq), jnp.int32)}
  constants = jnp.full((3, config.num_heads, seq, seq), 1.0 / seq)
  count = lambda cfg: dot_general_flops(jax.make_jaxpr(
      lambda p, c, x: programs.full(programs.Spec(cfg, ecfg, False, 2 * BATCH), p, c, x))(params, constants,
                                                                                        payload).jaxpr)
  assert count(const) == count(config)
  assert count(config) // BATCH == (sum(curves.layer_matmul_flops(config, l, seq) for l in range(3))
                                    + 2 * (config.hidden_size ** 2 + 2 * config.hidden_size))  # pooler, classifier
