"""Runs that cannot mix, lose or fake data (issue 11): fingerprinted workdirs, checkpoint fallback, configs
refused before any work. A tiny random BERT (tests/tiny_checkpoint.py) and csv files the tests write."""

import hashlib
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest

import eval as eval_cli
from drivers import papa_experiment
import train as train_cli
from configs import papa_demo, sweet_demo
from pipeline import checkpoints, data, train_loop
from tests import test_train_loop as tl
from tests.test_cli import write_task
from tests.test_papa_experiment import write_split


def tiny_config(root, **data_fields):
  """sweet on the tiny checkpoint: 60 train rows (12 held out for calibration), 20 eval rows, 6 steps of 8."""
  config = sweet_demo.get_config()
  config.model.checkpoint = str(root / 'ckpt')
  config.model.exit_layers = (1, 2)
  d = config.data
  d.source, d.train_path, d.eval_path = 'files', str(root / 'train.csv'), str(root / 'eval.csv')
  d.max_train_samples, d.calibration_size, d.max_seq_length = 0, 12, 16
  d.update(data_fields)
  t = config.train
  t.batch_size, t.num_epochs, t.learning_rate, t.checkpoint_every, t.log_every = 8, 1, 1e-3, 3, 2
  e = config.eval
  e.batch_size, e.timing_repeats, e.timing_examples, e.thresholds = 16, 1, 16, (0.6, 0.9)
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished sweet workdir (checkpoints at steps 3 and 6) and its data."""
  root = write_task(tmp_path_factory.mktemp('runsafety'))
  train_cli.run(tiny_config(root), str(root / 'work'))
  return root


def copy_workdir(trained, tmp_path) -> pathlib.Path:
  work = tmp_path / 'work'
  shutil.copytree(trained / 'work', work)
  return work


def damage(workdir, step, how='truncate', item='params'):
  """Truncates (to half) or deletes the largest array data file of a checkpoint step's item ('params' or 'train':
  the optimizer state and step)."""
  files = [p for p in (pathlib.Path(workdir) / 'checkpoints' / str(step) / item).glob('d/*')]
  biggest = max(files, key=lambda p: p.stat().st_size)
  if how == 'truncate':
    biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
  else:
    biggest.unlink()


def files_of(work):
  return {name: (work / name).read_bytes() for name in ('results.json', 'metrics.jsonl')}


# ------------------------------------------------------------------------------------- fingerprinted workdirs

def test_finished_rerun_with_same_data_leaves_results_and_metrics_untouched(trained, tmp_path, capsys):
  work = copy_workdir(trained, tmp_path)
  before = files_of(work)
  capsys.readouterr()
  again = train_cli.run(tiny_config(trained), str(work))
  assert files_of(work) == before  # byte for byte: no new eval row, no rewritten results
  assert 'already holds this finished run' in capsys.readouterr().out
  saved = json.loads(before['results.json'])
  assert again['per_exit_accuracy'] == saved['per_exit_accuracy']
  made_from = saved['fingerprint']['data']
  assert made_from['num_train'] == 48 and made_from['num_calibration'] == 12 and made_from['num_eval'] == 20
  assert made_from['train']['sha256'] == hashlib.sha256((trained / 'train.csv').read_bytes()).hexdigest()


def test_finished_rerun_with_another_train_file_is_refused(trained, tmp_path):
  work = copy_workdir(trained, tmp_path)
  before = files_of(work)
  write_split(tmp_path / 'other.csv', 60, 5)  # as many rows, other sentences: only the content hash differs
  with pytest.raises(ValueError, match=r'(?s)different run.*data\.train: saved .*train\.csv.*now .*other\.csv'
                                       r'.*new --workdir'):
    train_cli.run(tiny_config(trained, train_path=str(tmp_path / 'other.csv')), str(work))
  assert files_of(work) == before


def test_eval_refuses_a_data_seed_whose_splits_overlap_training(trained, tmp_path):
  work = copy_workdir(trained, tmp_path)
  with pytest.raises(ValueError, match=r'(?s)data\.seed: saved 42, now 7.*trained on') as e:
    eval_cli.run(tiny_config(trained, seed=7), str(work))
  assert 'data.num_eval' not in str(e.value)
  with pytest.raises(ValueError, match=r'data\.num_calibration: saved 12, now 6'):
    eval_cli.run(tiny_config(trained, calibration_size=6), str(work))
  assert not (work / 'eval').exists()


def test_eval_on_a_damaged_newest_checkpoint_uses_the_older_one_and_prints_a_summary(trained, tmp_path, capsys,
                                                                                      caplog):
  work = copy_workdir(trained, tmp_path)
  damage(work, 6)
  capsys.readouterr()
  with caplog.at_level(logging.WARNING):
    eval_cli.run(tiny_config(trained), str(work))
  assert any('step 6' in r.getMessage() and 'damaged' in r.getMessage() for r in caplog.records)
  out = capsys.readouterr().out
  accuracy = json.loads((work / 'eval' / 'per_exit_accuracy.json').read_text())['accuracy']
  temps = json.loads((work / 'eval' / 'temperatures.json').read_text())['temperatures']
  assert 'checkpoint step 3' in out
  assert ' '.join(f'{a:.4f}' for a in accuracy) in out and ' '.join(f'{t:.3f}' for t in temps) in out
  assert str(work / 'eval' / 'curve.png') in out and (work / 'eval' / 'curve.png').exists()


# ------------------------------------------------------------------------------------- damaged checkpoints

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """train_loop on the synthetic tiny method: 10 steps, checkpoints kept at steps 9 and 10."""
  work = tmp_path_factory.mktemp('tiny_run') / 'work'
  train_loop.train_and_evaluate(tl.config(), str(work), tl.tiny_method(), tl.splits(), tl.encode)
  return work


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize('how', ['truncate', 'delete'])
def test_restore_falls_back_from_a_damaged_newest_checkpoint(tiny_run, tmp_path, how, caplog):
  work, only9 = tmp_path / 'work', tmp_path / 'only9'
  shutil.copytree(tiny_run, work)
  shutil.copytree(tiny_run, only9)
  shutil.rmtree(only9 / 'checkpoints' / '10')  # the reference: step 9 as the newest, intact checkpoint
  method = tl.tiny_method()
  damage(work, 10, how)
  with caplog.at_level(logging.WARNING):
    params = train_loop.restore_params(tl.config(), str(work), method)
  for a, b in zip(_leaves(params), _leaves(train_loop.restore_params(tl.config(), str(only9), method))):
    np.testing.assert_array_equal(a, b)
  warnings = [r.getMessage() for r in caplog.records if 'damaged' in r.getMessage()]
  assert len(warnings) == 1 and 'step 10' in warnings[0] and 'using step 9' in warnings[0]
  assert '\n' not in warnings[0]


def test_training_resumes_from_the_newest_checkpoint_that_restores(tiny_run, tmp_path, capsys, caplog):
  work = tmp_path / 'work'
  shutil.copytree(tiny_run, work)
  damage(work, 10)
  capsys.readouterr()
  with caplog.at_level(logging.WARNING):
    train_loop.train_and_evaluate(tl.config(), str(work), tl.tiny_method(), tl.splits(), tl.encode)
  assert 'Resuming from step 9 of 10: 1 steps left.' in capsys.readouterr().out
  assert any('step 10' in r.getMessage() and 'damaged' in r.getMessage() for r in caplog.records)
  # The retrained last step equals the undamaged run's, and step 10 is a readable checkpoint again.
  method = tl.tiny_method()
  for a, b in zip(_leaves(train_loop.restore_params(tl.config(), str(work), method)),
                  _leaves(train_loop.restore_params(tl.config(), str(tiny_run), method))):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert checkpoints.Checkpointer(str(work), read_only=True).latest_step() == 10


def test_no_restorable_checkpoint_is_one_clear_error(tiny_run, tmp_path):
  work = tmp_path / 'work'
  shutil.copytree(tiny_run, work)
  damage(work, 10)
  damage(work, 9, 'delete')
  with pytest.raises(Exception) as e:
    train_loop.restore_params(tl.config(), str(work), tl.tiny_method())
  message = str(e.value)
  assert str(work / 'checkpoints') in message and 'steps 10, 9 are damaged' in message
  assert len(message.splitlines()) == 1 and len(message) < 600  # not a TensorStore spec dump


# ------------------------------------------------------------------------------------- impossible settings

_MUST = 'must be'


@pytest.mark.parametrize('field, value, says', [
    ('data.max_seq_length', 0, _MUST), ('data.max_seq_length', -5, _MUST), ('data.max_seq_length', 2, _MUST),
    ('train.num_epochs', 0, _MUST), ('train.learning_rate', -1.0, _MUST), ('train.learning_rate', 0.0, _MUST),
    ('train.batch_size', 0, _MUST), ('eval.batch_size', 0, _MUST), ('data.length_buckets', (), _MUST),
    ('data.length_buckets', (16, 0), _MUST),
    # issue 22's holes: not finite, a zero or negative epsilon, warmup outside [0, 1), negative decay or clip,
    # batches the 8 (simulated) devices cannot share evenly
    ('train.learning_rate', float('inf'), 'must be a finite'), ('train.learning_rate', float('nan'), 'finite'),
    ('train.adam_eps', 0.0, r'\(0, inf\)'), ('train.adam_eps', -1e-8, r'\(0, inf\)'),
    ('train.warmup_fraction', 1.0, r'\[0, 1\)'), ('train.warmup_fraction', -0.1, r'\[0, 1\)'),
    ('train.weight_decay', -0.01, r'\[0, inf\)'), ('train.grad_clip', -1.0, r'\[0, inf\)'),
    ('train.batch_size', 12, 'multiple of the 8 devices'), ('eval.batch_size', 20, 'multiple of the 8 devices')])
def test_impossible_settings_are_refused_before_any_work(tmp_path, field, value, says):
  config = tiny_config(tmp_path, train_path=str(tmp_path / 'absent.csv'))  # loading data would fail differently
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=rf'{field} .*{says}'):
    train_cli.run(config, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()


def test_papa_batch_size_and_pair_length_are_checked(tmp_path):
  config = papa_demo.get_config()
  config.papa.batch_size = 0
  with pytest.raises(ValueError, match=r'papa\.batch_size must be'):
    train_cli.run(config, str(tmp_path / 'work'))
  config = tiny_config(tmp_path, text_fields=('a', 'b'), max_seq_length=4)  # [CLS] a [SEP] b [SEP] needs 5
  with pytest.raises(ValueError, match=r'data\.max_seq_length must be a whole number >= 5'):
    train_cli.run(config, str(tmp_path / 'work'))


def test_single_class_training_set_names_file_and_field(tmp_path):
  (tmp_path / 'one.csv').write_text('text,stars\ngood film,5\nfine plot,5\ngreat cast,5\n')
  cfg = data.base_config()
  cfg.update(source='files', train_path=str(tmp_path / 'one.csv'), label_field='stars', calibration_size=0,
             eval_size=1)
  with pytest.raises(data.DataError, match=r"one\.csv: .*single class '5'.*'stars' \(data\.label_field\)"):
    data.load_splits(cfg)


def test_empty_text_is_an_error_with_file_and_row_unless_allowed(tmp_path):
  (tmp_path / 'train.csv').write_text('text,label\ngood film,1\n  ,0\ndull plot,0\nfun,1\n')
  cfg = data.base_config()
  cfg.update(source='files', train_path=str(tmp_path / 'train.csv'), calibration_size=0, eval_size=1)
  with pytest.raises(data.DataError, match=r"train\.csv: line 3: 'text' is empty"):
    data.load_splits(cfg)
  cfg.allow_empty_text = True
  splits = data.load_splits(cfg)
  assert sorted(splits.train.texts[0] + splits.eval.texts[0]) == ['  ', 'dull plot', 'fun', 'good film']


# ------------------------------------------------------------------------------------- PAPA's stages

def test_papa_rerun_with_another_train_file_recomputes_every_stage(trained, tmp_path, capsys):
  config = papa_demo.get_config()
  config.model.checkpoint = str(trained / 'ckpt')
  d = config.data
  d.source, d.train_path, d.eval_path = 'files', str(trained / 'train.csv'), str(trained / 'eval.csv')
  d.max_train_samples = d.max_eval_samples = 0
  p = config.papa
  p.length, p.estimate_max_examples, p.batch_size, p.eval_batch_size, p.num_epochs, p.ks = 12, 16, 8, 16, 1, (0, 1)
  p.ranking_epochs, p.ranking_max_steps, p.ranking_max_examples, p.measure_speed = 1, 1, 0, False
  work = tmp_path / 'work'
  papa_experiment.run(config, work)
  write_split(tmp_path / 'other.csv', 60, 5)
  d.train_path = str(tmp_path / 'other.csv')
  capsys.readouterr()
  res = papa_experiment.run(config, work)
  log = capsys.readouterr().out
  assert 'reusing' not in log
  assert 'averages: ' in log and 'was estimated from other data' in log and 'data.train' in log
  assert 'ranking: ' in log and 'redoing it' in log
  assert log.count('trained with other constants, heads or settings: redoing it') == 2  # k = 0 and k = 1
  assert res['fingerprint']['data']['train']['path'] == str(tmp_path / 'other.csv')
  for name in ('averages.json', 'ranking.json', 'probe_k0.json', 'probe_k1.json'):
    saved = json.loads((work / 'papa' / name).read_text())
    made_from = saved['fingerprint'] if name == 'averages.json' else saved['recipe']['fingerprint']
    assert made_from['data']['train']['path'] == str(tmp_path / 'other.csv'), name
