"""papa_experiment end to end on a tiny random BERT written as a real checkpoint directory (safetensors and
the packaged MiniLM's tokenizer) and tiny csv files: every stage, resume, extension, rescore."""

import json
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

import encoder_jax
from drivers import papa_experiment
from papa_jax import probe
from tests.test_papa import _rank_by_hand
from configs import papa_demo
from tests.tiny_checkpoint import write_checkpoint

H, LAYERS, HEADS, LENGTH = 15, 2, 3, 12
FIXTURES = Path(__file__).parent / 'fixtures'


def write_split(path, n, seed):
  rng = np.random.default_rng(seed)
  words = ['good', 'bad', 'movie', 'plot', 'great', 'awful', 'the', 'acting', 'fine', 'dull']
  rows = ['text,label']
  for _ in range(n):
    label = int(rng.integers(0, 2))
    text = ' '.join(rng.choice(words, rng.integers(2, 8))) + (' great' if label else ' awful')
    rows.append(f'{text},{label}')
  path.write_text('\n'.join(rows) + '\n')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('papa_exp')
  write_checkpoint(root / 'ckpt', hidden=H, layers=LAYERS, heads=HEADS, max_positions=LENGTH + 5)
  write_split(root / 'train.csv', 40, 0)
  write_split(root / 'eval.csv', 13, 1)
  config = papa_demo.get_config()
  config.model.checkpoint = str(root / 'ckpt')
  config.data.source = 'files'
  config.data.train_path, config.data.eval_path = str(root / 'train.csv'), str(root / 'eval.csv')
  config.data.max_train_samples = config.data.max_eval_samples = 0
  p = config.papa
  p.length, p.estimate_max_examples, p.batch_size, p.eval_batch_size, p.num_epochs = LENGTH, 20, 8, 16, 2
  p.ranking_epochs, p.ranking_max_steps, p.ranking_max_examples, p.speed_steps = 1, 2, 0, 2
  return config, root / 'work'


def test_run_resume_extend_rescore(setup):
  config, workdir = setup
  res = papa_experiment.run(config, workdir)
  out = workdir / 'papa'
  assert [r['k'] for r in res['results']] == [0, 3, 6]  # 6 heads: half = 3
  assert res['results'][0]['relative_drop'] == 0.0 and res['baseline_accuracy'] is not None
  for r in res['results']:
    assert r['relative_drop'] == pytest.approx((res['baseline_accuracy'] - r['accuracy']) / res['baseline_accuracy'])
  assert res['estimate_examples'] == 20 and res['speed']['step_speedup'] > 0
  assert '| 3 (half) | 50% |' in (out / 'results.md').read_text()
  ranking = json.loads((out / 'ranking.json').read_text())
  assert [tuple(h) for h in ranking['ranking']] == _rank_by_hand(ranking['lambdas'])
  probe_k3 = json.loads((out / 'probe_k3.json').read_text())
  assert probe_k3['heads'] == ranking['ranking'][:3]
  with np.load(out / 'probe_k3.npz', allow_pickle=False) as f:
    assert f['position_weights'].shape == (LAYERS + 1, LENGTH)

  # Resume: nothing is redone.
  stamps = lambda: {p.name: p.stat().st_mtime_ns for p in [*out.glob('probe_k*.npz'), out / 'ranking.json']}
  before = stamps()
  again = papa_experiment.run(config, workdir)
  assert stamps() == before
  assert [r['accuracy'] for r in again['results']] == [r['accuracy'] for r in res['results']]

  # Rescoring the saved heads reproduces the accuracies exactly (same deterministic eval path).
  rescored = papa_experiment.rescore(config, workdir)
  assert rescored['rescored']
  assert [r['accuracy'] for r in rescored['results']] == [r['accuracy'] for r in res['results']]

  # More estimate examples: the saved sums are extended, and later stages that used them are redone.
  config.papa.estimate_max_examples = 30
  config.papa.ks = (0, 'all')
  extended = papa_experiment.run(config, workdir)
  assert extended['estimate_examples'] == 30 and [r['k'] for r in extended['results']] == [0, 6]
  assert json.loads((out / 'ranking.json').read_text())['estimate_examples'] == 30


def test_feature_cache_modes_train_and_rescore_alike(setup, tmp_path):
  """'memory', 'disk' and 'none' (what the paper-size configs use) train and score a probe alike in float32:
  the cached batches hold the online batches' rows in the same order (same dropout masks), and training
  evaluates each epoch through the one function that eval.py's rescore calls."""
  base, _ = setup
  histories, rescored = {}, {}
  for i, mode in enumerate(('memory', 'disk', 'none')):
    config = ml_collections.ConfigDict(base.to_dict())
    config.papa.ks = (0, 'all')
    config.papa.feature_cache, config.papa.cache_dtype, config.papa.measure_speed = mode, 'float32', False
    config.papa.estimate_max_examples, config.papa.num_epochs, config.papa.learning_rate = 20, 3, 1e-2
    workdir = tmp_path / mode
    if i:  # the same averages and ranking: only the probes differ by mode
      (workdir / 'papa').mkdir(parents=True)
      for name in ('averages.npz', 'ranking.json'):
        shutil.copy(tmp_path / 'memory' / 'papa' / name, workdir / 'papa' / name)
    res = papa_experiment.run(config, workdir)
    histories[mode] = [[row['eval_accuracy'] for row in json.loads((workdir / 'papa' / f'probe_k{k}.json').read_text())
                        ['history']] for k in (0, LAYERS * HEADS)]
    rescored[mode] = [r['accuracy'] for r in papa_experiment.rescore(config, workdir)['results']]
    assert rescored[mode] == [r['accuracy'] for r in res['results']]  # rescoring is training's evaluation
    assert not list((workdir / 'papa').glob('features_*.npy'))  # disk caches are removed
  for mode in ('disk', 'none'):
    np.testing.assert_allclose(histories[mode], histories['memory'], rtol=0, atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(rescored[mode], rescored['memory'], rtol=0, atol=1e-6, err_msg=mode)
    for k in (0, LAYERS * HEADS):  # the trained heads themselves agree
      with np.load(tmp_path / mode / 'papa' / f'probe_k{k}.npz') as got, \
           np.load(tmp_path / 'memory' / 'papa' / f'probe_k{k}.npz') as want:
        for name in ('position_weights', 'dense/kernel', 'classifier/kernel'):
          np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=f'{mode} k={k} {name}')
  init = probe.init_head(jax.random.key(int(base.train.seed)), LAYERS, H, LENGTH, 2)
  with np.load(tmp_path / 'memory' / 'papa' / f'probe_k{LAYERS * HEADS}.npz') as trained:
    assert np.abs(trained['dense/kernel'] - np.asarray(init['dense']['kernel'])).max() > 1e-3  # training moved it


def _write_pairs(path, rows):
  path.write_text('premise,hypothesis,label\n' + ''.join(f'{a},{b},{y}\n' for a, b, y in rows))


def test_roberta_pairs_one_token_type_and_unoccupied_slots(tmp_path):
  """A RoBERTa checkpoint (type_vocab_size 1) on sentence pairs: the layout follows its tokenizer
  (<s> A </s></s> B </s>, every type 0), so the averages are finite (type 1 made them NaN); eval tokens in
  slots that no estimate example occupied are counted in the results."""
  from tests.test_tokenize import WORDS, tiny_tokenizer
  ckpt = tmp_path / 'roberta'
  shutil.copytree(FIXTURES / 'roberta_tiny', ckpt)
  tokenizer = tiny_tokenizer('roberta')
  tokenizer.save_pretrained(ckpt)
  rng = np.random.default_rng(0)
  words = ['a', 'man', 'plays', 'someone', 'makes', 'music']
  train = [(' '.join(rng.choice(words, 4)), str(rng.choice(words)), i % 2) for i in range(10)]  # B: one word
  evaluation = [('a man', 'someone makes music', 0), ('plays', 'music', 1), ('a', 'man plays a man', 1)]
  _write_pairs(tmp_path / 'train.csv', train)
  _write_pairs(tmp_path / 'eval.csv', evaluation)
  config = papa_demo.get_config()
  config.model.checkpoint = str(ckpt)
  config.data.source, config.data.text_fields = 'files', ('premise', 'hypothesis')
  config.data.train_path, config.data.eval_path = str(tmp_path / 'train.csv'), str(tmp_path / 'eval.csv')
  config.data.max_train_samples = config.data.max_eval_samples = 0
  config.papa.length, config.papa.estimate_max_examples, config.papa.eval_batch_size = LENGTH, 0, 4
  s = papa_experiment._setup(config, tmp_path / 'work')
  assert s.enc_config.type_vocab_size == 1
  est = papa_experiment.estimate(s)
  assert est.num_examples == 10 and np.isfinite(est.averages).all()
  eval_tokens = papa_experiment._tokens(s, s.splits.eval)
  batch = eval_tokens.batches[0]
  assert not batch['token_type_ids'].any()
  assert (batch['input_ids'][:, LENGTH // 2:LENGTH // 2 + 2] == WORDS.index('</s>')).all()
  # Independently: the slots the training layouts occupy, and the eval tokens outside them.
  lay = lambda rows: encoder_jax.papa_layout(tokenizer, [r[0] for r in rows], [r[1] for r in rows],
                                             length=LENGTH)['attention_mask'] > 0
  occupied = lay(train).any(0)
  hits = lay(evaluation)[:, ~occupied]
  # Train B sentences are one word (slot 8) and A four (slots 1-4): slots 5, 9 and 10 stay empty; 'makes music'
  # and 'man plays' (B cut to its 3 slots) land in 9 and 10.
  assert np.flatnonzero(~occupied).tolist() == [5, 9, 10] and hits.sum() == 4
  cov = papa_experiment._results(s, est, [], eval_tokens, rescored=False)['slot_coverage']
  assert cov == {'unoccupied_slots': np.flatnonzero(~occupied).tolist(), 'num_unoccupied_slots': int((~occupied).sum()),
                 'eval_tokens_in_unoccupied_slots': 4, 'eval_examples_with_tokens_in_unoccupied_slots': 2}
