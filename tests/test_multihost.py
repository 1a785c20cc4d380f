"""Two local processes (jax's multi-process mode over loopback), each tokenizing only its rows of every batch,
train to the same result as one, and evaluate (eval.py's sweet_eval.evaluate) to the same figures."""

import os
import socket
import subprocess
import sys

import numpy as np

from tests.script_env import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multiprocess_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run(count, workdir):
  port = str(_free_port())
  env = script_env()
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(count), port, str(workdir)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(count)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return [np.load(os.path.join(workdir, f'params_{i}.npz'), allow_pickle=False) for i in range(count)]


def test_two_processes_train_like_one(tmp_path):
  (single,) = _run(1, tmp_path / 'one')
  first, second = _run(2, tmp_path / 'two')
  assert set(single.files) == set(first.files) == set(second.files)
  # Each process tokenized only its own rows; where its bucket was shorter than the other's, it tokenized
  # them again at the agreed length (one process never needs to).
  assert single['retokenized'] == 0 and first['retokenized'] + second['retokenized'] > 0
  assert len(single.files) > 10
  for key in set(single.files) - {'retokenized'}:
    np.testing.assert_allclose(first[key], single[key], atol=2e-5, err_msg=key)
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)  # both hosts hold the same result
  # eval.py's evaluation (restored global params, calibration, sweep, adaptive engine) ran on every process.
  assert single['eval_curve'].shape == (2, 2) and 0 < single['eval_temperatures'].min()
  # Only process 0 writes logs and results.
  for name in ('results.json', 'metrics.jsonl', 'eval/curve.json', 'eval/temperatures.json'):
    assert (tmp_path / 'two' / name).exists(), name
