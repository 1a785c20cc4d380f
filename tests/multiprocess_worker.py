"""One process of the two-process CPU test (tests/test_multihost.py); not a test by itself.

usage: python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
With NUM_PROCESSES 1 it is the single-process reference run. Writes WORKDIR/params_<id>.npz.
"""

import os
import sys

# 2 local devices per process, with the compile flags tests/script_env.py passes
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2 ' + os.environ.get('XLA_FLAGS', '')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

pid, count, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if count > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # cross-process collectives on CPU
  os.environ.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(count),
                    JAX_PROCESS_ID=str(pid))
from pipeline import sharding  # noqa: E402

sharding.initialize_distributed()
assert jax.process_count() == count and jax.device_count() == 2 * count

import numpy as np  # noqa: E402

from drivers import sweet_eval  # noqa: E402
from pipeline import data, train_loop  # noqa: E402
from tests import test_train_loop as t  # noqa: E402

WORDS = {w: i for i, w in enumerate(['good', 'bad', 'film', 'plot', 'dull', 'fun'], 1)}
lengths_asked = []


def encode(texts_a, texts_b=None, length=None):
  """One id per word, padded to a bucket (5 or 8) of this process's rows, or to `length` when asked: the two
  processes tokenize different rows, so they disagree on the bucket of some batches."""
  del texts_b  # single sentences only
  tokens = [[WORDS[w] for w in t.split()] for t in texts_a]
  longest = max(map(len, tokens))
  if length is not None:
    lengths_asked.append(length)
  ids = np.zeros((len(tokens), length or (5 if longest <= 5 else 8)), np.int32)
  for r, row in enumerate(tokens):
    ids[r, :len(row)] = row
  return {'input_ids': ids, 'attention_mask': (ids > 0).astype(np.int32), 'token_type_ids': np.zeros_like(ids)}


method = t.tiny_method()
results = train_loop.train_and_evaluate(t.config(batch_size=8, num_epochs=1), workdir, method, t.splits(), encode)
params = train_loop.restore_params(t.config(), workdir, method)
flat = {jax.tree_util.keystr(k): sharding.to_host(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
# eval.py's evaluation: temperatures, the threshold sweep and the adaptive engine, on every process.
config = t.config()
config.eval.update(batch_size=8, thresholds=[0.6, 0.9], timing_examples=16, timing_repeats=1)
evaluation = sweet_eval.evaluate(config, workdir, method='sweet', encoder_config=t.tiny_encoder_config(),
                                 exit_config=t.EXIT_CONFIG, params=params,
                                 splits=data.Splits(t.dataset(40, 0), t.dataset(16, 2), t.dataset(20, 1)),
                                 encode_fn=encode)
np.savez(os.path.join(workdir, f'params_{pid}.npz'), accuracy=np.asarray(results['per_exit_accuracy']),
         retokenized=np.int32(len(lengths_asked)), eval_per_exit=np.asarray(evaluation['per_exit_accuracy']),
         eval_temperatures=np.asarray(evaluation['temperatures']),
         eval_curve=np.asarray([[p['accuracy'], p['layer_fraction']] for p in evaluation['points']]), **flat)
jax.distributed.shutdown() if count > 1 else None
