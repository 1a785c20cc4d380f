"""train.py and eval.py as a user runs them: a local csv, command-line overrides only, resume, curves.
Also SWEET with constant (PAPA) heads in its first segment, built by the registry."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from drivers import methods
from configs import sweet_demo, sweet_papa_demo
from papa_jax import averages
from tests.test_papa_experiment import write_split
from tests.tiny_checkpoint import write_checkpoint
from tests.script_env import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _overrides(root):
  return [f'--config.model.checkpoint={root / "ckpt"}', '--config.model.exit_layers=(1,2)',
          '--config.data.source=files', f'--config.data.train_path={root / "train.csv"}',
          f'--config.data.eval_path={root / "eval.csv"}', "--config.data.text_fields=('text',)",
          '--config.data.label_field=label', '--config.data.max_train_samples=0', '--config.data.calibration_size=12',
          '--config.data.max_seq_length=16', '--config.train.batch_size=8', '--config.train.num_epochs=1',
          '--config.train.learning_rate=1e-3', '--config.eval.batch_size=16', '--config.eval.timing_repeats=1']


def _run(script, *args):
  env = script_env()
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def write_task(root):
  """The tiny task of these tests in root: ckpt/ (a random BERT), train.csv (60 rows), eval.csv (20 rows)."""
  write_checkpoint(root / 'ckpt', max_positions=20)
  write_split(root / 'train.csv', 60, 0)
  write_split(root / 'eval.csv', 20, 1)
  return root


@pytest.fixture(scope='module')
def task(tmp_path_factory):
  return write_task(tmp_path_factory.mktemp('cli'))


def test_train_then_eval_on_a_local_csv(task):
  work = task / 'run'
  args = ['--config', 'configs/sweet_demo.py', '--workdir', str(work), *_overrides(task)]
  stdout = _run('train.py', *args)
  assert 'per-exit accuracy' in stdout
  results = json.loads((work / 'results.json').read_text())
  assert results['method'] == 'sweet' and results['exit_layers'] == [1, 2]
  assert len(results['per_exit_accuracy']) == 2 and results['num_examples'] == 20
  assert results['num_train_examples'] == 48  # 60 minus the 12 held out for calibration
  assert 'already holds this finished run' in _run('train.py', *args)  # finished: nothing retrained or rewritten
  assert json.loads((work / 'results.json').read_text())['per_exit_accuracy'] == results['per_exit_accuracy']

  _run('eval.py', *args)
  curve = json.loads((work / 'eval' / 'curve.json').read_text())
  assert curve['batch_size'] == 16 and len(curve['points']) == 11
  for point in curve['points']:
    assert sum(point['exit_counts']) == 20
    assert 0 < point['layer_fraction'] <= 1 and point['measured_speedup'] > 0
  assert (work / 'eval' / 'curve.png').stat().st_size > 0 and (work / 'eval' / 'curve.csv').exists()
  _run('eval.py', '--compare', f'{work},{work}', '--out', str(task / 'compare.png'))
  assert (task / 'compare.png').stat().st_size > 0


def test_sweet_with_constant_first_segment(task):
  config = sweet_papa_demo.get_config()
  config.model.checkpoint = str(task / 'ckpt')
  config.model.exit_layers = (1, 2)
  est = averages.AttentionSums.zeros(2, 3, 12)
  est.sums[:] = np.random.default_rng(0).random(est.sums.shape)
  est.counts[:] = 1.0
  averages.save(task / 'avg.npz', est)
  config.model.constants_path = str(task / 'avg.npz')
  built = methods.build(config, num_labels=2)
  assert built.encoder_config.kinds(0) == ('constant',) * 3 and built.encoder_config.kinds(1) == ('softmax',) * 3
  batch = built.encode_fn(['good plot', 'a dull film'], None)
  assert batch['input_ids'].shape == (2, 12) and batch['input_ids'][0, -1] == 102  # PAPA layout: [SEP] at L-1
  batch.update(labels=np.array([1, 0], np.int32), example_mask=np.ones(2, np.float32))
  params = built.method.init(jax.random.key(0))
  grads = jax.grad(lambda p: built.method.loss(p, batch, None)[0])(params)
  layer0, layer1 = grads['encoder']['layers_0'], grads['encoder']['layers_1']
  for name in ('query', 'key'):
    assert not np.any(np.asarray(layer0[name]['kernel'])) and not np.any(np.asarray(layer0[name]['bias']))
    assert np.any(np.asarray(layer1[name]['kernel']))
  assert np.any(np.asarray(layer0['value']['kernel']))


def test_length_buckets_set_how_far_batches_pad(task):
  config = sweet_demo.get_config()
  config.model.checkpoint = str(task / 'ckpt')
  config.model.exit_layers = (1, 2)
  texts = ['good plot', 'a dull film']  # 5 tokens at most with [CLS] and [SEP]
  # Default buckets 32, 64, ...: the first is capped at the tiny model's 20 positions.
  assert methods.build(config, 2).encode_fn(texts, None)['input_ids'].shape == (2, 20)
  config.data.length_buckets = (6, 12, 64)
  assert methods.build(config, 2).encode_fn(texts, None)['input_ids'].shape == (2, 6)
  assert methods.build(config, 2).encode_fn(texts + ['a rather long and dull review'], None)[
      'input_ids'].shape == (3, 12)


def test_registry_rejects_unknown_method_and_missing_constants(task):
  config = sweet_demo.get_config()
  config.method = 'nope'
  with pytest.raises(ValueError, match='Unknown method'):
    methods.build(config, 2)
  config = sweet_papa_demo.get_config()
  config.model.checkpoint = str(task / 'ckpt')
  config.model.exit_layers = (1, 2)
  config.model.constants_path = ''
  with pytest.raises(ValueError, match='constants_path'):
    methods.build(config, 2)


def test_overrides_without_workdir_train_in_their_own_derived_workdir(task, tmp_path):
  env = script_env()
  args = [sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/sweet_demo.py'),
          *_overrides(task)]
  run = lambda: subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  done = run()
  assert done.returncode == 0, done.stderr[-3000:]
  made = [p.name for p in (tmp_path / 'runs').iterdir()]
  assert len(made) == 1 and re.fullmatch(r'sweet_demo-[0-9a-f]{8}', made[0])  # never the plain runs/sweet_demo
  again = run()  # the same command finds its run again
  assert again.returncode == 0 and 'already holds this finished run' in again.stdout
  assert [p.name for p in (tmp_path / 'runs').iterdir()] == made
