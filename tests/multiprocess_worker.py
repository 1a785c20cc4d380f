"""One process of the two-process CPU test (tests/test_multihost.py); not a test by itself.

usage: python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
With NUM_PROCESSES 1 it is the single-process reference run. Writes WORKDIR/params_<id>.npz.
"""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'  # 2 local devices per process
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

from pipeline import train_loop  # noqa: E402
from tests import test_train_loop as t  # noqa: E402

method = t.tiny_method()
results = train_loop.train_and_evaluate(t.config(batch_size=8, num_epochs=1), workdir, method, t.splits(), t.encode)
params = train_loop.restore_params(t.config(), workdir, method)
flat = {jax.tree_util.keystr(k): sharding.to_host(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
np.savez(os.path.join(workdir, f'params_{pid}.npz'), accuracy=np.asarray(results['per_exit_accuracy']), **flat)
jax.distributed.shutdown() if count > 1 else None
