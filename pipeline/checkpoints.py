"""Orbax checkpoints of the train state {params, opt_state, step} and the data position.

Saved every N steps and at the end into workdir/checkpoints; a rerun of the same command resumes from
the newest checkpoint that restores: a damaged one (a truncated or missing file) costs one checkpoint, with a
warning, not the run. All processes call save/restore (Orbax writes collectively); wait() before exit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No checkpoint in a workdir restores; the message names the workdir and the damaged steps."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """The newest checkpoint that restored: its state, metadata and step, and the newer steps that did not
  (newest first), each with the reason in one line."""
  state: Any
  meta: dict[str, Any]
  step: int
  damaged: tuple[tuple[int, str], ...] = ()


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

  def restore_newest(self, abstract_state: Any, check_meta: Callable[[dict[str, Any]], None] | None = None,
                     *, delete_damaged: bool = False) -> Restored:
    """The newest checkpoint that restores, trying older ones when one cannot be read (a one-line warning
    per damaged step). check_meta(meta) runs on each checkpoint's metadata before its state is read, so that
    it can refuse another run's checkpoint (its exception propagates; it is not damage). delete_damaged
    removes the damaged steps, so that training can save those steps again.

    Raises FileNotFoundError when there is no checkpoint, CheckpointError when none restores.
    """
    self.manager.reload()  # steps on disk now, not as cached when the manager was made
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory}. Train first: python train.py --workdir ...')
    damaged = []
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      except Exception as e:  # Orbax and TensorStore raise many types for unreadable files; all mean damage
        damaged.append((step, _one_line(e)))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:
        damaged.append((step, _one_line(e)))
        continue
      for bad, why in damaged:
        logging.warning('Checkpoint step %d in %s is damaged (%s); using step %d.', bad, self.directory, why, step)
        if delete_damaged:
          self.manager.delete(bad)
      return Restored(state['state'], meta, step, tuple(damaged))
    raise CheckpointError(
        f'No checkpoint in {self.directory} restores: steps {", ".join(str(s) for s, _ in damaged)} are damaged '
        f'(step {damaged[0][0]}: {damaged[0][1]}). Delete {self.directory} to start over, or train in a new '
        '--workdir.')

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


def _one_line(error: Exception, limit: int = 160) -> str:
  """An exception as one short line: Orbax's messages run over many lines of TensorStore specs."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'
