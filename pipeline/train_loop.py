"""The method-agnostic trainer: jitted, sharded train/eval steps over a Method; logging; resume.

`train_and_evaluate(config, workdir, method, splits, encode_fn)` is the whole training job. It knows a
method only through Method's three functions (docs/INTERFACES.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import encoder_jax
from pipeline import checkpoints, data, fingerprint, reporting, sharding

Params = Any
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Method:
  """What the pipeline calls; it knows nothing else about a method.

  init(rng) -> params (trainable only); loss(params, batch, rng) -> (loss, metrics dict of scalars);
  predict(params, batch) -> logits [num_exits, batch, num_labels];
  param_groups(params) -> a tree of the params' structure whose leaves are hashable group labels: each group
  is clipped by its own global norm (None: the whole tree is one group). It has no default: SWEET's
  separation holds only with its per-segment groups (sweet_jax.objectives.param_groups), so a method built
  by hand must say which clipping it wants.
  """
  name: str
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
  predict: Callable[[Params, Batch], jax.Array]
  param_groups: Callable[[Params], Any] | None


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def clip_by_group_norm(max_norm: float, param_groups: Callable[[Params], Any]) -> optax.GradientTransformation:
  """optax.clip_by_global_norm applied to each group of leaves on its own (its own global norm), so a large
  gradient in one group cannot shrink another group's update. param_groups(updates) labels every leaf.

  The state is optax's EmptyState, as clip_by_global_norm's: checkpoints keep their structure."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params  # the norm is of the updates alone
    leaves, treedef = jax.tree.flatten(updates)
    labels = treedef.flatten_up_to(param_groups(updates))
    out = list(leaves)
    for label in dict.fromkeys(labels):  # first-seen order: static and deterministic
      members = [k for k, l in enumerate(labels) if l == label]
      clipped, _ = clip.update([leaves[k] for k in members], optax.EmptyState())
      for k, leaf in zip(members, clipped):
        out[k] = leaf
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(train_config, total_steps: int, *, param_groups: Callable[[Params], Any] | None
                   ) -> optax.GradientTransformation:
  """AdamW with gradient clipping; warmup then linear decay to 0 ('linear') or constant after warmup.

  Weight decay skips biases and layer-norm scales (leaves with fewer than 2 dimensions), as BERT does.
  Clipping is by global norm over the whole tree (param_groups=None), or over each group of `param_groups`
  on its own. param_groups is required: pass the method's (Method.param_groups), since a global clip
  lets one exit's loss rescale every segment's update and undoes SWEET's separation. Adam's epsilon is train_config.adam_eps (required: it changes every update of small gradients).
  """
  lr = train_config.learning_rate
  warmup = int(round(train_config.warmup_fraction * total_steps))
  if train_config.schedule == 'linear':
    after = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  elif train_config.schedule == 'constant':
    after = optax.constant_schedule(lr)
  else:
    raise ValueError(f"train.schedule must be 'linear' or 'constant', got {train_config.schedule!r}.")
  if 'adam_eps' not in train_config:
    raise ValueError('train.adam_eps is missing: set it in the config (Hugging Face Trainer and optax: 1e-8; '
                     'the demo configs: 1e-6, as BERT).')
  schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup]) if warmup else after
  decay_mask = lambda params: jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)
  parts = [optax.adamw(schedule, b1=0.9, b2=0.999, eps=float(train_config.adam_eps),
                       weight_decay=train_config.weight_decay, mask=decay_mask)]
  if train_config.grad_clip > 0:
    clip = (optax.clip_by_global_norm(train_config.grad_clip) if param_groups is None
            else clip_by_group_norm(train_config.grad_clip, param_groups))
    parts.insert(0, clip)
  return optax.chain(*parts)


def make_train_step(method: Method, tx: optax.GradientTransformation):
  """(state, batch, rng) -> (state, metrics); state = {'params', 'opt_state', 'step'}."""

  def step(state, batch, rng):
    (_, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(state['params'], batch, rng)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
            'step': state['step'] + 1}, metrics

  return step


def predict_logits(method: Method, params: Params, dataset: data.TextDataset, encode_fn, batch_size: int,
                   mesh) -> np.ndarray:
  """Every exit's logits on a whole dataset, in order: [num_exits, N, num_labels] (numpy, every host)."""
  predict = jax.jit(method.predict, compiler_options=encoder_jax.compiler_options())
  chunks = []
  for batch in data.iterate_batches(dataset, encode_fn, batch_size, seed=0, epoch=0, shuffle=False,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    agree_length=sharding.max_over_processes):
    global_batch = sharding.global_batch(batch, mesh)
    logits = sharding.to_host(predict(params, global_batch))
    keep = sharding.to_host(global_batch['example_mask']) > 0
    chunks.append(logits[:, keep])
  return np.concatenate(chunks, axis=1)


def evaluate(method, params, dataset, encode_fn, batch_size, mesh) -> dict[str, Any]:
  """Per-exit accuracy (exit order) and the logits it came from."""
  logits = predict_logits(method, params, dataset, encode_fn, batch_size, mesh)
  accuracy = (logits.argmax(-1) == dataset.labels[None]).mean(-1)
  return {'per_exit_accuracy': [float(a) for a in accuracy], 'num_examples': int(len(dataset))}


def _mesh(config):
  """The mesh of config.mesh and the smallest leaf (in elements) split over its 'model' axis."""
  m = config.get('mesh', {})
  return sharding.make_mesh(m.get('model_axis', 1)), m.get('min_shard_size', 2 ** 16)


@contextlib.contextmanager
def _stop_on_signals():
  """Ctrl-C / SIGTERM set a flag instead of killing the process, so the loop can save and exit."""
  received: list[int] = []
  handler = lambda signum, frame: received.append(signum)
  try:
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  except ValueError:  # not the main thread: leave signals alone
    previous = {}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@dataclasses.dataclass
class _Throughput:
  """Training examples per second, timed from the end of this process's first step (the one that compiles)."""
  batch_size: int
  t0: float = dataclasses.field(default_factory=time.time)
  seen: int = 0
  timing: bool = False

  def step_done(self) -> None:
    if self.timing:
      self.seen += self.batch_size
    else:
      self.t0, self.timing = time.time(), True

  @property
  def rate(self) -> float:
    return self.seen / max(time.time() - self.t0, 1e-9)


@dataclasses.dataclass
class _Run:
  """A training run's fixed pieces: its length, its checkpointer, and what every checkpoint records."""
  ckpt: checkpoints.Checkpointer
  meta: dict[str, Any]  # steps_per_epoch, batch_size, seed, num_train_examples, fingerprint
  total_steps: int

  def save(self, state, step: int, force: bool = False) -> None:
    spe = self.meta['steps_per_epoch']
    self.ckpt.save(step, state, dict(self.meta, step=step, epoch=step // spe, batch_in_epoch=step % spe),
                   force=force)


def train_and_evaluate(config, workdir: str, method: Method, splits: data.Splits, encode_fn,
                       extra_results: dict[str, Any] | None = None,
                       run_fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
  """Trains `method` on splits.train, checkpointing into workdir and resuming from it, then scores
  splits.eval. Writes workdir/metrics.jsonl and workdir/results.json; returns the results dict.

  run_fingerprint (pipeline.fingerprint.of_run; its 'train' part is always this config's) is recorded in
  every checkpoint and in results.json, with the code's provenance. A workdir whose checkpoint was made by
  another run (any differing identity field: data, model, constants, any train.* field that changes the
  parameters) is refused (FingerprintMismatch listing the fields); a finished one with the same identity
  returns its results.json untouched. A damaged newest checkpoint falls back to the newest one that restores
  (the damaged step is moved aside, not deleted); any other restore error propagates.

  Raises TrainingDiverged on a non-finite loss (the last good checkpoint stays). On SIGINT/SIGTERM it
  saves, and returns results with 'interrupted': True.
  """
  tc = config.train
  mesh, min_shard = _mesh(config)
  steps_per_epoch = data.num_batches(len(splits.train), tc.batch_size, drop_remainder=True)
  if steps_per_epoch == 0:
    raise ValueError(f'The training split has {len(splits.train)} examples, fewer than one batch of {tc.batch_size}.')
  total_steps = tc.num_epochs * steps_per_epoch
  tx = make_optimizer(tc, total_steps, param_groups=method.param_groups)

  init_rng, train_rng = jax.random.split(jax.random.key(tc.seed))
  params = method.init(init_rng)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  shardings = sharding.param_shardings(mesh, state, min_shard)
  # Every train.* field that changes the parameters is in the identity, whoever called.
  meta = {'steps_per_epoch': steps_per_epoch, 'batch_size': tc.batch_size, 'seed': tc.seed,
          'num_train_examples': len(splits.train),
          'fingerprint': fingerprint.normalized({**(run_fingerprint or {}), 'train': fingerprint.of_train(config)}),
          'code': fingerprint.code_provenance()}
  run = _Run(checkpoints.Checkpointer(workdir, max_to_keep=tc.get('max_to_keep', 2)), meta, total_steps)
  pc, pi = jax.process_count(), jax.process_index()

  def batches_from(step):
    epoch, offset = divmod(step, steps_per_epoch)
    return data.iterate_batches(splits.train, encode_fn, tc.batch_size, seed=tc.seed, epoch=epoch,
                                shuffle=True, start_batch=offset, process_index=pi, process_count=pc,
                                agree_length=sharding.max_over_processes, drop_remainder=True)

  writer = reporting.MetricWriter(workdir)
  try:
    state, done = _initial_state(run, state, shardings, workdir)
    if done is not None:
      return done
    wall0 = time.time()
    train_step = jax.jit(make_train_step(method, tx), donate_argnums=(0,),
                         out_shardings=(shardings, sharding.replicated(mesh)),
                         compiler_options=encoder_jax.compiler_options())  # CPU: see encoder_jax/tuning.py
    step_fn = lambda s, batch, step: train_step(s, sharding.global_batch(batch, mesh),
                                                jax.random.fold_in(train_rng, step))
    with _stop_on_signals() as signals:
      state, step, throughput = _train_steps(run, state, step_fn, batches_from, tc, writer, signals)
  finally:
    run.ckpt.close()
  train_time, rate = time.time() - wall0, throughput.rate
  if signals:
    print(f'Stopped by signal {signals[0]} at step {step}/{total_steps}; checkpoint saved in {run.ckpt.directory}. '
          'Rerun the same command to resume.')
    return {'interrupted': True, 'step': step}

  results = evaluate(method, state['params'], splits.eval, encode_fn, config.eval.get('batch_size', 64), mesh)
  writer.write(total_steps, 'eval', {f'exit_{i}/accuracy': a for i, a in enumerate(results['per_exit_accuracy'])})
  results.update(extra_results or {})
  results.update(method=method.name, seed=tc.seed, steps=total_steps, train_time_s=train_time,
                 examples_per_s=rate, fingerprint=meta['fingerprint'], code=meta['code'], config=config)
  reporting.write_json(f'{workdir}/results.json', results)
  return results


def _initial_state(run: _Run, state, shardings, workdir: str):
  """-> (the state to train from, None), or (None, results) when workdir already holds this finished run.

  state: a freshly initialised {'params', 'opt_state', 'step'}; the newest checkpoint that restores (and is
  this run's, _same_run_check) replaces it.
  """
  if run.ckpt.latest_step() is None:
    # Own copies: the step donates the state, and init may return arrays the caller still holds.
    # (jit outputs never alias non-donated inputs; device_put may, even with may_alias=False.)
    return jax.jit(lambda s: s, out_shardings=shardings)(state), None
  restored = run.ckpt.restore_newest(checkpoints.abstract(state, shardings), _same_run_check(run.meta, workdir),
                                     move_damaged=True)
  if restored.step > run.total_steps:  # a longer run (recorded before train.* was in the identity)
    raise fingerprint.FingerprintMismatch(
        f'{workdir} holds step {restored.step} of a longer run than this command\'s {run.total_steps} steps; '
        'give this command a new --workdir.')
  if restored.step == run.total_steps:
    done = _finished_results(workdir, run.meta['fingerprint'], run.total_steps)
    if done is not None:
      _say(f'{workdir} already holds this finished run ({restored.step} steps, same run identity): '
           'results.json and metrics.jsonl are left as they are.')
      return None, done
  _say(f'Resuming from step {restored.step} of {run.total_steps}: '
       f'{max(run.total_steps - restored.step, 0)} steps left.')
  return restored.state, None


def _train_steps(run: _Run, state, step_fn, batches_from, tc, writer, signals):
  """Trains from state['step'] to run.total_steps, or until `signals` (then saves where it stopped).

  step_fn(state, batch, step) -> (state, metrics); batches_from(step) iterates the batches from that step
  to the end of its epoch. Logs every tc.log_every steps, checkpoints every tc.checkpoint_every (default: an
  epoch) and at the end. -> (state, the step reached, _Throughput). Raises TrainingDiverged.
  """
  spe = run.meta['steps_per_epoch']
  log_every, ckpt_every = max(1, tc.get('log_every', 50)), tc.get('checkpoint_every', 0) or spe
  step = last_good = int(state['step'])
  throughput = _Throughput(tc.batch_size)
  bar = reporting.progress(run.total_steps, initial=step)
  try:
    while step < run.total_steps and not signals:
      for batch in batches_from(step):
        state, metrics = step_fn(state, batch, step)
        step += 1
        loss = float(metrics['loss'])
        if not math.isfinite(loss):
          raise TrainingDiverged(
              f'Loss became {loss} at step {step}. The last good checkpoint (step {last_good}) is kept in '
              f'{run.ckpt.directory}; lower train.learning_rate or check the data, then rerun to resume.')
        throughput.step_done()
        bar.update(1)
        if step % log_every == 0 or step == run.total_steps:
          bar.set_postfix(loss=f'{loss:.4f}', ex_per_s=f'{throughput.rate:.1f}')
          writer.write(step, 'train', dict(jax.device_get(metrics), examples_per_s=throughput.rate,
                                           epoch=(step - 1) // spe))
        if step % ckpt_every == 0 or step == run.total_steps:
          run.save(state, step)
          last_good = step
        if signals or step >= run.total_steps:
          break
  finally:
    bar.close()
  if signals and last_good != step:
    run.save(state, step, force=True)
  return state, step, throughput


def _say(message: str) -> None:
  if reporting.is_writer():
    print(message, flush=True)


def _same_run_check(meta: dict[str, Any], workdir: str) -> Callable[[dict[str, Any]], None]:
  """check_meta for Checkpointer.restore_newest: the saved run's data, model, seed and batch layout must be
  this one's. A checkpoint from before fingerprints were recorded is checked on the rest, with a warning."""

  def check(saved: dict[str, Any]) -> None:
    keys = [k for k in meta if k not in ('fingerprint', 'code')]  # the code is shown, never compared
    now = {'checkpoint': {k: meta[k] for k in keys}}
    then = {'checkpoint': {k: saved.get(k) for k in keys}}
    if 'fingerprint' in saved:
      now.update(meta['fingerprint'])
      then.update(saved['fingerprint'])
    else:
      logging.warning('%s records no data fingerprint (made by an older version): its data cannot be checked.',
                      workdir)
    fingerprint.check(then, now, workdir)

  return check


def _finished_results(workdir: str, run_fingerprint: dict[str, Any], total_steps: int) -> dict[str, Any] | None:
  """workdir/results.json when it holds this run's final results (same identity and step count)."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  # Compared fields only: the same data in another folder is the same run (paths are information).
  same = ('fingerprint' in saved and not fingerprint.differences(saved['fingerprint'], run_fingerprint)
          and saved.get('steps') == total_steps)
  return saved if same else None


def restore(config, workdir: str, method: Method,
            check_meta: Callable[[dict[str, Any]], None] | None = None) -> checkpoints.Restored:
  """The newest checkpoint in workdir whose parameters restore (for eval, predict, export): Restored with
  state = the trained params alone, replicated on this mesh (the optimizer state is not read, so damage in
  it costs nothing here); check_meta(meta) may refuse it (see Checkpointer.restore_newest)."""
  mesh, min_shard = _mesh(config)
  template = jax.eval_shape(method.init, jax.random.key(0))
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.restore_newest(checkpoints.abstract(template, sharding.param_shardings(mesh, template, min_shard)),
                               check_meta, params_only=True)
  finally:
    ckpt.close()


def restore_params(config, workdir: str, method: Method) -> Params:
  """The trained params of the newest checkpoint in workdir that restores (for eval), replicated on this mesh."""
  return restore(config, workdir, method).state


def scored_record(restored: checkpoints.Restored) -> dict[str, Any]:
  """{'checkpoint_step', 'run_identity', 'run_identity_digest', 'code'} of a restored checkpoint: what an
  eval, predict or export output records about the parameters it used (fingerprint.scored_record)."""
  return fingerprint.scored_record(restored.step, restored.meta.get('fingerprint'))
