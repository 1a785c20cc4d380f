"""Orbax checkpoints of the train state {params, opt_state, step} and the data position.

Saved every N steps and at the end into workdir/checkpoints; a rerun of the same command resumes from
the latest. All processes call save/restore (Orbax writes collectively); wait() before exit.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager: items 'state' (pytree) and 'meta' (JSON)."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep, create=not read_only,
                                             read_only=read_only, save_interval_steps=0 if read_only else 1),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> None:
    """Saves asynchronously; the state's arrays may be donated afterwards only after wait()."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The state at `step` (latest by default), laid out like `abstract_state` (arrays or
    jax.ShapeDtypeStruct with shardings), and its metadata."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}. Train first: python train.py --workdir ...')
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], out['meta']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs of a pytree (with shardings), the template Orbax restores into."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
