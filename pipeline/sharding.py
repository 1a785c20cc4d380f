"""Device mesh, batch and parameter shardings, and multi-host initialisation.

One mesh with axes ('data', 'model'): the batch is split over 'data'; parameters are replicated, or,
for models too large to replicate, their large tensors are split over 'model'. The same code runs on
1 CPU, 8 simulated CPU devices, a GPU node or a TPU pod.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Environment variables that mean "this process is one of several" (jax reads them itself).
_MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'MEGASCALE_COORDINATOR_ADDRESS')


def initialize_distributed(mode: str = 'auto') -> None:
  """Joins a multi-process job: jax.distributed.initialize() before any other jax call.

  mode 'yes' always initialises (a Cloud TPU pod slice: jax finds the coordinator from the TPU
  metadata; SLURM and Open MPI likewise); 'auto' only when the environment names a coordinator or
  a cluster manager; 'no' never. Outside those clusters, set JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process.
  """
  if mode not in ('auto', 'yes', 'no'):
    raise ValueError(f"--distributed must be 'auto', 'yes' or 'no', got {mode!r}.")
  if mode == 'no' or jax.distributed.is_initialized():
    return
  if mode == 'auto' and not any(os.environ.get(k) for k in _MULTIPROCESS_ENV):
    return
  if os.environ.get('JAX_COORDINATOR_ADDRESS') and os.environ.get('JAX_NUM_PROCESSES'):
    jax.distributed.initialize(os.environ['JAX_COORDINATOR_ADDRESS'], int(os.environ['JAX_NUM_PROCESSES']),
                               int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()


def make_mesh(model_axis: int = 1) -> Mesh:
  """A ('data', 'model') mesh over every device; model_axis devices share each parameter's shards."""
  n = jax.device_count()
  if model_axis < 1 or n % model_axis:
    raise ValueError(f'mesh.model_axis={model_axis} must divide the {n} devices.')
  return jax.make_mesh((n // model_axis, model_axis), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)  # XLA propagates shardings


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data' (and 'model', which holds replicas of the same rows)."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(mesh: Mesh, params: Any, min_size: int = 2 ** 16) -> Any:
  """Per-leaf shardings: leaves with at least min_size elements are split over 'model' along their
  largest axis that divides evenly; the rest (and everything when the axis has size 1) replicate."""
  k = mesh.shape['model']

  def spec(leaf):
    shape = np.shape(leaf)
    if k == 1 or np.prod(shape, dtype=np.int64) < min_size:
      return replicated(mesh)
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
      if shape[axis] % k == 0:
        return NamedSharding(mesh, P(*([None] * axis + ['model'])))
    return replicated(mesh)

  return jax.tree.map(spec, params)


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over 'data'.

  With one process, the local rows are the whole batch; with several, each process passes only
  its own rows (pipeline.data.iterate_batches(process_index=...)) and the global batch is their union.
  """
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def max_over_processes(value: int) -> int:
  """The largest of every process's value (each process passes its own; all get the same answer).

  pipeline.data.iterate_batches(agree_length=...) uses it so that processes which tokenize different rows of
  a batch pad them to one length; one tiny all-gather per batch, cheap next to a train step.
  """
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array gathered to every host as numpy."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_local(tree: Any) -> Any:
  """A pytree of (possibly multi-host) global arrays as numpy arrays, whole, on every process.

  For work each process then does on its own devices (evaluation and adaptive-inference timing, analyses):
  a jit over arrays that span other hosts' devices would be a computation all processes must join. A
  collective when arrays span several processes: every process calls it, in the same order.
  """
  return jax.tree.map(lambda x: to_host(x) if isinstance(x, jax.Array) else x, tree)
