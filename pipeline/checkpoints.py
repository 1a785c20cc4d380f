"""Orbax checkpoints of the train state {params, opt_state, step} and the data position.

Saved every N steps and at the end into workdir/checkpoints as three items: 'params', 'train' ({opt_state,
step}) and 'meta' (JSON), so that eval, predict and export read the parameters alone and damage in the
optimizer state costs them nothing. A rerun of the same command resumes from the newest checkpoint that
restores. A step is damaged only when a file is missing, truncated or unreadable as Orbax data (is_damage);
any other error (a transient read error, out of memory, another run's checkpoint) propagates. Nothing is
deleted: training moves a damaged step aside to checkpoints/<step>.damaged-<n> and names it in a warning.
All processes call save/restore (Orbax writes collectively); wait() before exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

# TensorStore status codes that mean the bytes on disk are not a readable array: absent (NOT_FOUND), cut
# short (OUT_OF_RANGE), or not decodable (DATA_LOSS, FAILED_PRECONDITION: a broken compressed stream).
# UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED... may pass on a retry: they are not damage.
DAMAGE_CODES = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS', 'FAILED_PRECONDITION')
_OLD_ITEM = 'state'  # checkpoints written before params and optimizer state were split: one item


class CheckpointError(RuntimeError):
  """No checkpoint in a workdir restores; the message names the workdir and the damaged steps."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """The newest checkpoint that restored: its state (or params alone), metadata and step, and the newer steps
  that did not (newest first), each with the reason in one line."""
  state: Any
  meta: dict[str, Any]
  step: int
  damaged: tuple[tuple[int, str], ...] = ()


def is_damage(error: BaseException) -> bool:
  """Whether `error` (from an Orbax restore) says a checkpoint file is missing, truncated or not Orbax data.
  Orbax wraps TensorStore's errors in a plain Exception, so the whole cause chain is read."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (FileNotFoundError, json.JSONDecodeError, EOFError)):
      return True
    if isinstance(error, ValueError) and str(error).split(':', 1)[0].strip() in DAMAGE_CODES:
      return True
    if isinstance(error, KeyError) and 'was not found in the checkpoint' in str(error):
      return True  # a step directory without the item: a partly deleted checkpoint
    error = error.__cause__ or error.__context__
  return False


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager: items 'params', 'train' (pytrees) and 'meta' (JSON)."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep, create=not read_only,
                                             read_only=read_only, save_interval_steps=0 if read_only else 1),
        item_names=('params', 'train', 'meta', _OLD_ITEM))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> None:
    """state: {'params', 'opt_state', 'step'}. Saves asynchronously; the state's arrays may be donated
    afterwards only after wait()."""
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state['params']),
        train=ocp.args.StandardSave({'opt_state': state['opt_state'], 'step': state['step']}),
        meta=ocp.args.JsonSave(meta)), force=force)

  def _read(self, step: int, abstract_state: Any, params_only: bool) -> Any:
    """The state at `step` laid out like abstract_state ({'params', 'opt_state', 'step'}, or the params alone
    when params_only)."""
    step_dir = os.path.join(self.directory, str(step))
    if not os.path.isdir(os.path.join(step_dir, 'params')) and os.path.isdir(os.path.join(step_dir, _OLD_ITEM)):
      want = {'params': abstract_state} if params_only else abstract_state
      out = self.manager.restore(step, args=ocp.args.Composite(**{_OLD_ITEM: ocp.args.PyTreeRestore(
          want, restore_args=ocp.checkpoint_utils.construct_restore_args(want), partial_restore=params_only)}))
      return out[_OLD_ITEM]['params'] if params_only else out[_OLD_ITEM]
    if params_only:
      return self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_state)))['params']
    train = {'opt_state': abstract_state['opt_state'], 'step': abstract_state['step']}
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state['params']), train=ocp.args.StandardRestore(train)))
    return {'params': out['params'], **out['train']}

  def restore_newest(self, abstract_state: Any, check_meta: Callable[[dict[str, Any]], None] | None = None,
                     *, params_only: bool = False, move_damaged: bool = False) -> Restored:
    """The newest checkpoint that restores, trying older ones past damaged steps (is_damage; a one-line
    warning each). abstract_state: the template ({'params', 'opt_state', 'step'}, or the params alone when
    params_only). check_meta(meta) runs on each checkpoint's metadata before its arrays are read, so that it
    can refuse another run's checkpoint (its exception propagates). move_damaged renames damaged steps to
    <step>.damaged-<n> (kept, never deleted), so that training can save those steps again.

    Raises FileNotFoundError when there is no checkpoint, CheckpointError when none restores, and any error
    that is not damage as it is.
    """
    self.manager.reload()  # steps on disk now, not as cached when the manager was made
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory}. Train first: python train.py --workdir ...')
    damaged = []
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
        if meta is None:
          raise FileNotFoundError(f'step {step} has no readable meta item')
      except Exception as e:
        if not is_damage(e):
          raise
        damaged.append((step, _one_line(e)))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state = self._read(step, abstract_state, params_only)
      except Exception as e:
        if not is_damage(e):
          raise
        damaged.append((step, _one_line(e)))
        continue
      for bad, why in damaged:
        moved = self._move_aside(bad) if move_damaged else None
        logging.warning('Checkpoint step %d in %s is damaged (%s); using step %d.%s', bad, self.directory, why,
                        step, f' The damaged step is kept as {moved}.' if moved else '')
      return Restored(state, meta, step, tuple(damaged))
    raise CheckpointError(
        f'No checkpoint in {self.directory} restores: steps {", ".join(str(s) for s, _ in damaged)} are damaged '
        f'(step {damaged[0][0]}: {damaged[0][1]}). Move {self.directory} aside to start over, or train in a new '
        '--workdir.')

  def _move_aside(self, step: int) -> str | None:
    """Renames checkpoints/<step> to checkpoints/<step>.damaged-<n> (the first free n); -> the new path."""
    source = os.path.join(self.directory, str(step))
    if jax.process_index() != 0 or not os.path.isdir(source):
      return None
    n = 1
    while os.path.exists(f'{source}.damaged-{n}'):
      n += 1
    os.rename(source, f'{source}.damaged-{n}')
    self.manager.reload()
    return f'{source}.damaged-{n}'

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
  """An exception as one short line: Orbax's messages run over many lines of TensorStore specs. The innermost
  cause says what was wrong (Orbax's own wrapper only says that reading failed)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'
