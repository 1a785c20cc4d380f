"""Continuous batching scheduled on the device: the adaptive engine's default mode, 'stream'.

The queues of adaptive.py's module docstring (one per exit after the first, a ring of 2 x batch_size rows)
live on the device with their heads and counts, and one jitted program (`chunk`) runs a chunk of K input
batches: a `lax.while_loop` whose every step picks the next segment call from the queue counts and runs it
with `lax.switch` (one branch per segment and row count). The host sends a chunk's inputs and gets its answers
back once per chunk, never per segment call; and it dispatches the next chunk before reading the answers of
the previous one (fetches lag LAG chunks), so the device never waits for the host. The host-scheduled
version of the same schedule (adaptive.py, mode 'host_stream') reads every call's flags back to count the
next queue: a round trip per segment call, which costs 10-15% of the full model's time on a CPU and drains
the launch queue on an accelerator.

The schedule, one choice per loop step:
  1. a queue holding at least batch_size rows: the DEEPEST such queue runs a full batch;
  2. else an input batch of the chunk is left: segment 0 runs it;
  3. else, at the end of the stream (flush): the SHALLOWEST non-empty queue runs its remainder, padded up to
     the smallest bucket that holds it;
  4. else the chunk is done (rows left in queues wait for the next chunk at this sequence length).
Invariant (every queue below 2 x batch_size rows, so a push never overwrites an unread row): a call reads at
most batch_size rows, so it pushes at most batch_size survivors into the next queue; rule 1 runs the deepest
full queue first, so whenever a call runs, the queue it pushes into holds fewer than batch_size rows (if it
held more, that queue, deeper, would have run first). Hence every queue holds at most 2 x batch_size - 1 rows.
The program checks it anyway at every push and returns an error code with the answers (`Queues` bits below);
the host raises on it (DeviceStream.fetch), never overwriting rows silently. Each step reads an input batch or
moves at least one row one exit deeper, so the loop ends; a step bound guards it too.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sweet_jax import curves
from sweet_jax import engine_programs as programs

LAG = 2  # chunks dispatched ahead of the oldest unread answers
ERRORS = {1: 'a push past a queue\'s capacity (unread rows would be overwritten)',
          2: 'more answers than the answer buffer holds', 4: 'the schedule passed its step bound'}


class Queues(NamedTuple):
  """The queues of exits 1 .. E-1 at one sequence length, on the device (a pytree).

  rings: one engine_programs ring per queue, stacked: every leaf has leading axes [E-1, capacity] (ring k
  holds the queue of exit k + 1; a model with one exit keeps one unused ring). head, count: int32 [E-1], the
  count rows from ring position head on (wrapping) are the queued examples, oldest first.
  Invariant 0 <= count <= capacity: checked inside `chunk` at every push (error bit 1).
  """
  rings: dict
  head: jax.Array
  count: jax.Array

  @classmethod
  def empty(cls, spec: programs.Spec, seq: int) -> 'Queues':
    num = spec.exit_config.num_exits - 1
    rings = [programs.empty_ring(spec, seq) for _ in range(max(num, 1))]
    return cls(jax.tree.map(lambda *a: jnp.stack(a), *rings), jnp.zeros(num, jnp.int32),
               jnp.zeros(num, jnp.int32))

  def cleared(self) -> 'Queues':
    """No queued rows (the ring buffers are kept: their stale rows are never read)."""
    return self._replace(head=jnp.zeros_like(self.head), count=jnp.zeros_like(self.count))


class _Carry(NamedTuple):
  queues: Queues
  answers: dict  # 'index', 'pred', 'exit' int32 [A]; 'logits' float32 [A, C]
  answered: jax.Array  # rows of answers written
  stats: jax.Array  # int32 [3, E]: calls, rows computed, examples that left, per exit
  ptr: jax.Array  # the next input batch of the chunk
  error: jax.Array  # bits of ERRORS
  action: jax.Array  # the next branch, -1: done
  steps: jax.Array


def _branches(spec: programs.Spec, buckets: tuple[int, ...]) -> list[tuple[int, int]]:
  """(exit, rows) of every switch branch: exit 0 on a full input batch, then every later exit at every bucket."""
  return [(0, spec.batch_size)] + [(i, r) for i in range(1, spec.exit_config.num_exits) for r in buckets]


def _choose(spec, buckets, queues: Queues, ptr, n_inputs, flush):
  """The next branch by the schedule of the module docstring; -1 when the chunk is done."""
  num = spec.exit_config.num_exits - 1
  has_input = ptr < n_inputs
  if num == 0:
    return jnp.where(has_input, 0, -1)
  count, nb = queues.count, len(buckets)
  full = count >= spec.batch_size
  deepest_full = num - 1 - jnp.argmax(full[::-1])
  shallowest = jnp.argmax(count > 0)
  bucket = jnp.argmax(jnp.asarray(buckets) >= count[shallowest])  # buckets ascend to batch_size
  action = jnp.where(flush & jnp.any(count > 0), 1 + shallowest * nb + bucket, -1)
  action = jnp.where(has_input, 0, action)
  return jnp.where(jnp.any(full), 1 + deepest_full * nb + nb - 1, action).astype(jnp.int32)


def _record(answers, answered, leave, index, pred, exit_, logits):
  """Answers with the `leave` rows appended at position `answered` on."""
  size = answers['index'].shape[0]
  where = jnp.where(leave, answered + jnp.cumsum(leave) - 1, size)  # out of range: dropped
  rows = {'index': index, 'pred': pred, 'exit': jnp.full_like(index, exit_), 'logits': logits.astype(jnp.float32)}
  answers = jax.tree.map(lambda a, v: a.at[where].set(v, mode='drop'), answers, rows)
  return answers, answered + leave.sum()


def _call(spec, args, inputs, exit_: int, rows: int, operands) -> dict[str, Any]:
  """One switch branch: the segment call of exit_ on `rows` rows, its outputs padded to batch_size rows.

  operands: (rings, head, ptr) of the loop state, read only. Exit 0 reads the chunk's input batch ptr,
  a later exit the first `rows` rows of its queue. Only these rows go in and out of the branch: a branch that
  returned the queues would make XLA copy every ring on every call (its outputs cannot alias the loop's
  buffers), which cost 3-7% of the ideal speedup at batch 256 (bench/RESULTS.md).
  Returns {'payload' (for the next segment), 'index', 'leave', 'pred', 'logits' float32 [B, C], 'last',
  'streak'}, each with a leading axis of batch_size rows (rows past `rows`: padding).
  """
  params, constants, temperatures, rule, threshold = args
  rings, head, ptr = operands
  if exit_ == 0:
    x = jax.tree.map(lambda a: a[ptr], inputs)
    state = curves.initial_state(rows)
  else:
    x = programs.take(rings, head[exit_ - 1], rows, spec.capacity, at=(exit_ - 1,))
    state = {'last': x['last'], 'streak': x['streak']}
  payload, logits = programs.forward(spec, exit_, params, constants, x['payload'])
  leave, pred, state = curves.decide(rule, logits, temperatures[exit_], threshold, state,
                                     is_last=exit_ == spec.exit_config.num_exits - 1)
  out = {'payload': payload, 'index': x['index'], 'leave': leave, 'pred': pred,
         'logits': logits.astype(jnp.float32), **state}
  pad = spec.batch_size - rows
  return jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) if pad else a, out)


def _step(spec, buckets, args, inputs, c: _Carry) -> _Carry:
  """One loop step: the call c.action names (a switch branch), then its rows' answers and survivors."""
  branches = _branches(spec, buckets)
  calls = [functools.partial(_call, spec, args, inputs, i, r) for i, r in branches]
  q = c.queues
  out = jax.lax.switch(c.action, calls, (q.rings, q.head, c.ptr))
  exit_ = jnp.asarray([i for i, _ in branches], jnp.int32)[c.action]
  rows = jnp.asarray([r for _, r in branches], jnp.int32)[c.action]
  num, cap, b = spec.exit_config.num_exits - 1, spec.capacity, spec.batch_size
  head, count, ptr, taken = q.head, q.count, c.ptr, 0
  if num:  # the rows this call took leave exit_'s queue (none when exit_ is 0: the input batch)
    k = jnp.maximum(exit_ - 1, 0)
    taken = jnp.where(exit_ > 0, jnp.minimum(count[k], rows), 0)
    head, count = head.at[k].set((head[k] + taken) % cap), count.at[k].add(-taken)
  first = inputs['valid'][jnp.minimum(ptr, len(inputs['valid']) - 1)]  # exit 0: the input batch's rows
  valid = jnp.where(exit_ == 0, first, jnp.arange(b) < taken)
  ptr = ptr + (exit_ == 0)
  leave = out['leave'] & valid
  answers, answered = _record(c.answers, c.answered, leave, out['index'], out['pred'], exit_, out['logits'])
  error = c.error | jnp.where(answered > answers['index'].shape[0], 2, 0)
  rings = q.rings
  if num:  # survivors join the next exit's queue (ring exit_); the last exit keeps none
    keep = valid & ~leave & (exit_ < num)
    ring = jnp.minimum(exit_, num - 1)
    row = {'payload': out['payload'], 'index': out['index'], 'last': out['last'], 'streak': out['streak']}
    rings = programs.push(rings, row, keep, (head[ring] + count[ring]) % cap, cap, at=(ring,))
    count = count.at[ring].add(keep.sum())
    error = error | jnp.where(count[ring] > cap, 1, 0)
  stats = c.stats.at[:, exit_].add(jnp.stack([1, rows, leave.sum()]).astype(jnp.int32))
  return c._replace(queues=Queues(rings, head, count), answers=answers, answered=answered, stats=stats,
                    ptr=ptr, error=error)


def answer_rows(spec: programs.Spec, chunk_batches: int) -> int:
  """Answer buffer rows of one chunk: its inputs, plus every row queued when it starts (< capacity per queue)."""
  return chunk_batches * spec.batch_size + (spec.exit_config.num_exits - 1) * spec.capacity


@functools.partial(jax.jit, static_argnames=('spec', 'buckets'), donate_argnames=('queues',))
def chunk(spec: programs.Spec, params, constants, temperatures, rule, threshold, queues: Queues, inputs,
          n_inputs, flush, *, buckets: tuple[int, ...]):
  """K input batches through the exits, every segment call chosen and run on the device.

  Args:
    queues: this sequence length's Queues (donated: updated in place).
    inputs: {'payload': {input_ids, attention_mask, token_type_ids: int32 [K, B, seq]}, 'index': int32 [K, B]
      (position in the stream), 'valid': bool [K, B]}; the first n_inputs (int32) of the K batches are real.
    flush: bool: at the end of the stream, empty every queue (else leave each below batch_size rows).
    buckets: ascending row counts of partial calls, the last one batch_size (static).
  Returns:
    (queues, answers {'index', 'pred', 'exit': int32 [A], 'logits': float32 [A, C]} whose first `answered`
    rows are the examples that left, answered, stats int32 [3, E] (calls, rows computed, examples that left per
    exit), error int32 (bits of ERRORS; 0: none)).
  """
  k, e = inputs['index'].shape[0], spec.exit_config.num_exits
  size = answer_rows(spec, k)
  args = (params, constants, temperatures, rule, threshold)
  answers = {'index': jnp.full((size,), -1, jnp.int32), 'pred': jnp.zeros((size,), jnp.int32),
             'exit': jnp.zeros((size,), jnp.int32),
             'logits': jnp.zeros((size, spec.exit_config.num_labels), jnp.float32)}
  zero = jnp.int32(0)
  start = _Carry(queues, answers, zero, jnp.zeros((3, e), jnp.int32), zero, zero,
                 _choose(spec, buckets, queues, zero, n_inputs, flush), zero)
  bound = k + (e - 1) * size  # each step reads an input batch or moves >= 1 row one exit deeper

  def body(c: _Carry) -> _Carry:
    c = _step(spec, buckets, args, inputs, c)
    error = c.error | jnp.where(c.steps + 1 >= bound, 4, 0)
    return c._replace(action=_choose(spec, buckets, c.queues, c.ptr, n_inputs, flush), steps=c.steps + 1,
                      error=error)

  c = jax.lax.while_loop(lambda c: (c.action >= 0) & (c.error == 0), body, start)
  return c.queues, c.answers, c.answered, c.stats, c.error


class DeviceStream:
  """The host side of mode 'stream': groups input batches into chunks of one sequence length, keeps each
  length's Queues on the device between chunks and runs, and reads answers back LAG chunks late.

  buckets: as `chunk`; chunk_batches: K, input batches per chunk (a shorter last chunk is padded to K and its
  padding never runs, so one program serves every chunk of a sequence length).
  """

  def __init__(self, spec: programs.Spec, buckets: tuple[int, ...], chunk_batches: int):
    if chunk_batches < 1:
      raise ValueError(f'chunk_batches must be >= 1, got {chunk_batches}.')
    self.spec, self.buckets, self.chunk_batches = spec, tuple(buckets), chunk_batches
    self._queues: dict[int, Queues] = {}  # seq -> its queues (kept between runs: no allocation per run)

  def _inputs(self, rows: list[dict[str, Any]], seq: int):
    """Input batches (engine_programs.input_rows at batch_size) stacked to [K, B, ...], padded with copies."""
    b = self.spec.batch_size
    if not rows:  # a flush alone
      rows = [programs.input_rows({'input_ids': np.zeros((b, seq), np.int32)}, 0, b)]
    rows = rows + [rows[0]] * (self.chunk_batches - len(rows))
    return jax.tree.map(lambda *a: np.stack(a), *rows)

  def run(self, args, batches: Iterable[dict[str, np.ndarray]], threshold: float):
    """All batches through the exits. args: (params, constants, temperatures, rule).
    Returns (rows N, answers [(index, pred, exit, logits) arrays per chunk], stats int [3, E], round trips)."""
    spec, size = self.spec, self.spec.batch_size
    self._queues = {seq: q.cleared() for seq, q in self._queues.items()}
    run = _Fetcher(spec)
    used, chunk_rows, chunk_seq, total = [], [], None, 0
    for batch in batches:
      n, seq = batch['input_ids'].shape
      if n > size:
        raise ValueError(f'A batch of {n} rows exceeds the engine batch_size {size}.')
      if chunk_rows and (seq != chunk_seq or len(chunk_rows) == self.chunk_batches):
        self._dispatch(run, args, threshold, chunk_seq, chunk_rows, flush=False)
        chunk_rows = []
      if seq not in used:
        used.append(seq)
      chunk_rows.append(programs.input_rows(batch, total, size))
      chunk_seq, total = seq, total + n
    for seq in used:  # the flush at the end of the stream; the last chunk flushes its own length
      last = seq == chunk_seq
      self._dispatch(run, args, threshold, seq, chunk_rows if last else [], flush=True)
    run.drain()
    return total, run.answers, run.stats, run.round_trips

  def _dispatch(self, run: '_Fetcher', args, threshold, seq: int, rows, *, flush: bool) -> None:
    if seq not in self._queues:
      self._queues[seq] = Queues.empty(self.spec, seq)
    params, constants, temperatures, rule = args
    queues, *out = chunk(self.spec, params, constants, temperatures, rule, jnp.float32(threshold),
                         self._queues[seq], self._inputs(rows, seq), jnp.int32(len(rows)), jnp.bool_(flush),
                         buckets=self.buckets)
    self._queues[seq] = queues
    run.add(seq, out)

  def warmup(self, args, seq: int) -> None:
    """Compiles (and runs once on dummy rows) the chunk program of this sequence length."""
    dummy = {'input_ids': np.zeros((self.spec.batch_size, seq), np.int32)}
    self.run(args, [dummy] * self.chunk_batches, 0.5)


class _Fetcher:
  """The answers of one run, read back LAG chunks after their dispatch; raises on a chunk's error code."""

  def __init__(self, spec: programs.Spec):
    self.pending: collections.deque = collections.deque()
    self.answers: list[tuple[np.ndarray, ...]] = []
    self.stats = np.zeros((3, spec.exit_config.num_exits), np.int64)
    self.round_trips = 0

  def add(self, seq: int, out) -> None:
    self.pending.append((seq, out))
    if len(self.pending) > LAG:
      self.fetch()

  def fetch(self) -> None:
    seq, out = self.pending.popleft()
    answers, answered, stats, error = jax.device_get(out)
    self.round_trips += 1
    if error:
      what = '; '.join(m for bit, m in ERRORS.items() if error & bit)
      raise RuntimeError(f'Adaptive engine, sequence length {seq}: {what} (an engine bug: rows would be lost).')
    self.answers.append(tuple(answers[k][:answered] for k in ('index', 'pred', 'exit', 'logits')))
    self.stats += stats

  def drain(self) -> None:
    while self.pending:
      self.fetch()
