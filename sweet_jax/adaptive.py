"""Real adaptive inference: run segment by segment, and let confident examples leave between segments.

Four ways to run the same exits (all return, per example, the prediction and the exit it left at, which
equal what curves.assign_exits derives offline from all-exit logits with the same temperatures and rule, up to
float rounding in other batch shapes: see curves.borderline):

  'stream'       continuous batching scheduled on the device (the default; device_stream.py). Each exit after
                 the first has a queue (a ring buffer on the device, capacity 2 x batch_size) of examples
                 waiting for its segment. A segment runs only when its queue holds a full batch, so every
                 segment works at the batch size the full model runs at; examples that stay on are scattered
                 into the next queue. Queue heads and counts live on the device and one jitted program runs a
                 chunk of input batches (a while loop over segment calls chosen by lax.switch): the host sends
                 inputs and reads answers once per chunk. At the end of the stream the queues are flushed.
  'host_stream'  the same continuous batching scheduled by the host: one jitted call per segment, whose flags
                 the host reads back to count the next queue (a round trip per segment call). The engine before
                 issue 26, kept as the comparison that shows what the round trips cost.
  'compact'      batch compaction, one input batch at a time: after each exit the confident examples leave
                 and the rest are gathered into a smaller batch, padded up to the next bucket size, for the
                 next segment; every batch is finished before the next one starts (bounded latency per batch).
  'calm'         no compaction (as t5x's CALM): the whole batch runs each segment until its least confident
                 example has left. Shown for comparison: its savings vanish as the batch grows.

Why continuous batching. Compaction alone shrinks the batch at every exit: a batch of 64 of which 60% leave
at the first exit sends ~26 examples to segment 1, then ~13, ~6... Each stage then pays for padding up to its
bucket (on average half a bucket step, a large share of a small batch) and runs at a small batch where
per-example throughput is lower (on accelerators much lower), so measured speedup trails the FLOPs-ideal one
most exactly where early exit saves most. Continuous batching (the queue in front of each segment, as LLM
servers batch decode steps) runs every segment at the full batch size except for one padded flush per
segment at the end of the stream, so the per-example cost of every segment matches the full model's. The
cost is latency: an example may wait in a queue for later batches, and results come out of order (run() puts
them back in input order). Use 'compact' when each batch must be answered before the next arrives. Why on
the device: with the host scheduling, every segment call ends in a synchronisation (its flags come back
before the next call can be chosen), a fixed cost of 10-15% of the full model on a CPU (bench/RESULTS.md)
that on a GPU or TPU also drains the launch queue; scheduled on the device, the host dispatches chunk after
chunk without waiting. Measured figures: bench/RESULTS.md.

Mechanics. The state of a queued example is its hidden state [seq, H] and mask (sweet / early_exit; for
multi_model its token ids, since each member re-encodes from the embeddings), its index in the input stream,
and the exit rule's state (patience). Gather from the source queue, the segment, the exit decision and the
scatter into the destination queue are one step (engine_programs.stage for the host-scheduled modes, a
switch branch of device_stream.chunk for 'stream') per (segment, rows, seq); rows is the batch size or a
bucket size, so compilations are bounded by segments x buckets x sequence lengths; `warmup` compiles them
all before timing. Queues are donated, so the scatter writes in place.

Queues and their invariant. A queue holds the examples waiting for one exit's segment at one sequence
length; its capacity is 2 x batch_size rows. A call takes at most batch_size rows, so it pushes at most
batch_size survivors into the next queue, and a call runs only when that next queue holds fewer than
batch_size rows (host modes: every call first pumps the next queue, recursively; 'stream': the deepest full
queue always runs first). So every queue holds at most 2 x batch_size - 1 rows at any time, whatever the
exit pattern, the number of exits or of sequence lengths. `Queue` (host modes) checks 0 <= count <= capacity
at every push and pop and raises; 'stream' checks every push on the device and returns an error code that the
host raises on: the scatter would otherwise silently overwrite unread rows. The host schedule: after each
input batch, 'host_stream' pumps every queue of that sequence length, in exit order, to below one batch;
'compact' and 'calm' empty them. At the end of the stream (the flush) every queue is emptied in exit order:
full calls while it holds a full batch, then one call on the remainder padded up to a bucket. A queue
emptied in several calls feeds the next several calls' survivors; that is where the room-making matters
(without it, the flush with four or more exits pushed two calls' survivors onto a queue already holding up to
batch_size - 1 rows, past its capacity, and lost rows).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import EncoderConfig
from sweet_jax import curves, device_stream, exits
from sweet_jax import engine_programs as programs

MODES = ('stream', 'host_stream', 'compact', 'calm')
_PAYLOAD_KEYS = programs.PAYLOAD_KEYS
default_buckets = programs.default_buckets
_full = programs.full  # the full model's program (tests lower and call it)


@dataclasses.dataclass
class Result:
  """predictions, exit_index: int32 [N] in input order (-1 for rows whose example_mask is 0); logits: float32
  [N, C], each example's logits at the exit it left at (zeros for skipped rows). stats: per exit 'calls',
  'rows' computed and examples that 'left'; 'host_round_trips' (reads of device results that wait for the
  device) and 'host_round_trips_per_1000' examples."""
  predictions: np.ndarray
  exit_index: np.ndarray
  stats: dict[str, Any]
  logits: np.ndarray | None = None


def _result(total: int, num_labels: int, answers, stats: dict[str, Any]) -> Result:
  """Result from answers [(index, pred, exit (int or [k]), logits [k, C])]; stats gains the per-1000 rate."""
  predictions = np.full(total, -1, np.int32)
  exit_index = np.full(total, -1, np.int32)
  logits = np.zeros((total, num_labels), np.float32)
  for index, pred, exit_, exit_logits in answers:
    predictions[index] = pred
    exit_index[index] = exit_
    logits[index] = exit_logits
  stats['host_round_trips_per_1000'] = 1000.0 * stats['host_round_trips'] / max(total, 1)
  return Result(predictions, exit_index, stats, logits)


@dataclasses.dataclass
class Queue:
  """Examples waiting for exit `exit`'s segment at sequence length `seq`, in the host-scheduled modes: a ring
  buffer on the device whose head and count the host keeps.

  ring: engine_programs.empty_ring; the `count` rows from ring position `head` on (wrapping) are the queued
  examples, oldest first.
  Invariant: 0 <= count <= capacity, checked at every push and pop: a push past the capacity would overwrite
  unread rows on the device (examples lost without a trace), so it raises instead.
  """
  exit: int
  seq: int
  capacity: int
  ring: dict[str, Any]
  head: int = 0
  count: int = 0

  @property
  def end(self) -> int:
    """Ring position the next pushed row goes to."""
    return (self.head + self.count) % self.capacity

  def _check(self, count: int, what: str) -> None:
    if not 0 <= count <= self.capacity:
      raise RuntimeError(f'Queue of exit {self.exit} at sequence length {self.seq}: {what} would leave {count} '
                         f'rows, outside [0, capacity {self.capacity}] (an engine bug: rows would be lost).')

  def reserve(self, rows: int) -> None:
    """Checks, before a call may push up to `rows` rows, that they fit (the device writes them unchecked)."""
    self._check(self.count + rows, f'pushing up to {rows} rows onto {self.count}')

  def push(self, ring: dict[str, Any], rows: int) -> None:
    """The ring after a call wrote `rows` rows at `end` (the old ring was donated to that call)."""
    self._check(self.count + rows, f'pushing {rows} rows onto {self.count}')
    self.ring, self.count = ring, self.count + rows

  def pop(self, rows: int) -> None:
    """Drops the `rows` oldest rows (a call has read them)."""
    if rows < 0:
      raise RuntimeError(f'Queue of exit {self.exit} at sequence length {self.seq}: pop of {rows} rows.')
    self._check(self.count - rows, f'popping {rows} rows of {self.count}')
    self.head, self.count = (self.head + rows) % self.capacity, self.count - rows

  def clear(self) -> None:
    self.head = self.count = 0


class AdaptiveEngine:
  """Adaptive inference of an exit model (sweet / early_exit) or a multi_model cascade.

  Args:
    encoder_config, exit_config: the model.
    params: exits.init_exit_model layout (sweet, early_exit) or exits.init_multi_model layout (multi_model).
    method: 'sweet' | 'early_exit' | 'multi_model'.
    temperatures: [E] per-exit temperatures (None: ones).
    rule: 'confidence' | 'entropy' | 'patience' (see curves.decide).
    batch_size: rows of every full segment call ('stream'), and the largest bucket.
    buckets: row counts partial batches are padded up to (default: default_buckets(batch_size)).
    constants: PAPA constant attention matrices, when the encoder has constant heads.
    chunk_batches: input batches per device program in mode 'stream' (the host reads answers once per chunk).
  Engines of the same model, batch size and buckets share compiled programs (whatever the rule, threshold
  or temperatures: those are inputs, not constants of the program).
  """

  def __init__(self, encoder_config: EncoderConfig, exit_config: exits.ExitConfig, params, *, method: str,
               temperatures=None, rule: str = 'confidence', batch_size: int = 64,
               buckets: Sequence[int] | None = None, constants=None, chunk_batches: int = 8):
    if method not in curves.METHODS:
      raise ValueError(f'Unknown method {method!r}; choose from {curves.METHODS}.')
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    self.rule = jnp.int32(curves.rule_id(rule))
    self.method, self.batch_size = method, batch_size
    self.encoder_config, self.exit_config = encoder_config, exit_config
    # Onto the device once: numpy leaves (as load_pretrained returns) would be copied in at every call.
    self.params, self.constants = jax.device_put((params, constants))
    self.num_exits = exit_config.num_exits
    temps = np.ones(self.num_exits) if temperatures is None else np.asarray(temperatures)
    self.temperatures = jnp.asarray(temps, jnp.float32).reshape(self.num_exits)
    self.buckets = tuple(sorted(b for b in set(buckets or default_buckets(batch_size)) if b < batch_size))
    self.buckets += (batch_size,)
    self.capacity = 2 * batch_size  # < batch_size rows before a call, plus its <= batch_size survivors
    self.spec = programs.Spec(encoder_config, exit_config, method == 'multi_model', self.capacity)
    self._queues: dict[int, dict[int, Queue]] = {}  # host modes: seq -> exit i >= 1 -> its queue
    self._device = device_stream.DeviceStream(self.spec, self.buckets, chunk_batches)  # mode 'stream'

  # --------------------------------------------------------------------------------------- host side

  def _bucket(self, n: int) -> int:
    return next(b for b in self.buckets if b >= n)

  def _queues_at(self, seq: int) -> dict[int, Queue]:
    """The queues of exits 1 .. E-1 at sequence length seq, allocated on first use."""
    if seq not in self._queues:
      self._queues[seq] = {i: Queue(i, seq, self.capacity, programs.empty_ring(self.spec, seq))
                           for i in range(1, self.num_exits)}
    return self._queues[seq]

  def run(self, batches: Iterable[dict[str, np.ndarray]], threshold: float, *, mode: str = 'stream') -> Result:
    """Adaptive inference over batches (dicts of int32 [b, seq] input_ids, attention_mask, token_type_ids;
    optionally example_mask [b], rows with 0 are skipped), b <= batch_size.

    Returns predictions and exit indices [N] (N = total rows, input order) and stats: per exit segment
    'calls', 'rows' computed (padding and, for 'calm', examples that already left included) and examples
    that 'left' there; the host round trips.
    """
    if mode not in MODES:
      raise ValueError(f'Unknown mode {mode!r}; choose from {MODES}.')
    num_labels = self.exit_config.num_labels
    if mode == 'stream':
      args = (self.params, self.constants, self.temperatures, self.rule)
      total, answers, stats, trips = self._device.run(args, batches, threshold)
      stats = {**{key: stats[k].tolist() for k, key in enumerate(('calls', 'rows', 'left'))},
               'host_round_trips': trips}
      return _result(total, num_labels, answers, stats)
    for queues in self._queues.values():  # rings are kept between runs (no allocation per run); empty them
      for q in queues.values():
        q.clear()
    state = _Run(self, threshold, calm=mode == 'calm')
    total = 0
    for batch in batches:
      n, seq = batch['input_ids'].shape
      if n > self.batch_size:
        raise ValueError(f'A batch of {n} rows exceeds the engine batch_size {self.batch_size}.')
      queues = self._queues_at(seq)
      x = programs.input_rows(batch, total, self._bucket(n))
      state.start_batch(x['index'][x['valid']])
      state.call(queues, 0, n, batch=x)
      state.drain(queues, full_only=mode == 'host_stream')
      total += n
    for queues in self._queues.values():  # the flush at the end of the stream
      state.drain(queues, full_only=False)
    return _result(total, num_labels, state.answers, state.stats)

  def run_full(self, batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
    """The full model (single final exit, every head softmax: engine_programs.full) on every batch:
    predictions int32 [N] (the timing baseline). Every batch is dispatched before any result is read (one
    round trip), as the 'stream' mode does."""
    out = []
    for batch in batches:
      payload = {k: np.asarray(batch[k] if k in batch else np.zeros_like(batch['input_ids']), np.int32)
                 for k in _PAYLOAD_KEYS}
      out.append(jnp.argmax(_full(self.spec, self.params, self.constants, payload), -1))
    return np.concatenate(jax.device_get(out)).astype(np.int32) if out else np.zeros(0, np.int32)

  def warmup(self, seq_lengths: Iterable[int], *, full: bool = True, modes: Sequence[str] = MODES) -> float:
    """Compiles (and runs once on dummy rows) every program run() (in these modes) and run_full() can call at
    these sequence lengths, so that timed runs exclude compilation. Returns the seconds spent."""
    start = time.perf_counter()
    thr, no = jnp.float32(0.5), jnp.bool_(False)
    for seq in sorted(set(int(s) for s in seq_lengths)):
      dummy = {'input_ids': np.zeros((self.batch_size, seq), np.int32),
               'attention_mask': np.ones((self.batch_size, seq), np.int32),
               'token_type_ids': np.zeros((self.batch_size, seq), np.int32)}
      if full:
        self.run_full([dummy])
      if 'stream' in modes:
        self._device.warmup((self.params, self.constants, self.temperatures, self.rule), seq)
      if not set(modes) - {'stream'}:
        continue
      self._queues_at(seq)
      for rows in self.buckets:
        src = programs.input_rows({k: v[:rows] for k, v in dummy.items()}, 0, rows)
        for i in range(self.num_exits):
          dst = programs.empty_ring(self.spec, seq) if i < self.num_exits - 1 else None
          out, dst = programs.stage(self.spec, self.params, self.constants, self.temperatures, self.rule, thr, no,
                                    src, 0, rows, dst, 0, index=i, rows=rows)
          src = dst
        jax.block_until_ready(out)
    return time.perf_counter() - start


class _Run:
  """The bookkeeping of one AdaptiveEngine.run: segment calls, the answers they give and the stats.

  Every call goes through `call`, which first pumps the next exit's queue below one batch (full calls only,
  recursively down the exits), so its survivors (at most batch_size) always fit: see the module docstring.
  """

  def __init__(self, engine: AdaptiveEngine, threshold: float, *, calm: bool):
    self.engine, self.calm = engine, calm
    self.threshold, self.keep_all = jnp.float32(threshold), jnp.bool_(calm)
    self.stats = {key: [0] * engine.num_exits for key in ('calls', 'rows', 'left')}
    self.stats['host_round_trips'] = 0  # one per segment call: its flags tell the host the next queue's count
    self.answers: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []  # (indices, predictions, exit, logits)
    self.pending: dict[int, bool] = {}  # calm: global index -> still in (the queues carry rows that left)

  def start_batch(self, indices: np.ndarray) -> None:
    """calm: the examples (global indices) of the batch about to enter."""
    if self.calm:
      self.pending = {int(k): True for k in indices}

  def call(self, queues: dict[int, Queue], i: int, take: int, batch=None) -> None:
    """Segment i on `take` rows: the input batch (i = 0, engine_programs.input_rows) or the oldest rows of exit
    i's queue, padded up to a bucket. Rows that stay on go to exit i + 1's queue."""
    e = self.engine
    src, dst = queues.get(i), queues.get(i + 1)
    if dst is not None:
      self.pump(queues, i + 1, full_only=True)  # now dst.count < batch_size, and take <= batch_size
      dst.reserve(take)
    out, ring = programs.stage(e.spec, e.params, e.constants, e.temperatures, e.rule, self.threshold,
                               self.keep_all, batch if src is None else src.ring, 0 if src is None else src.head,
                               take, None if dst is None else dst.ring, 0 if dst is None else dst.end, index=i,
                               rows=e._bucket(take))
    out = jax.device_get(out)
    self.stats['host_round_trips'] += 1
    if src is not None:
      src.pop(take)
    if dst is not None:
      dst.push(ring, int(out['kept']))
    leave = out['leave']
    if self.calm:  # rows that left earlier ride along; record each example's first exit only
      leave = leave & np.array([self.pending.get(int(k), False) for k in out['index']])
      self.pending.update((int(k), False) for k in out['index'][leave])
      if dst is not None and not any(self.pending.values()):  # the whole batch has left: CALM stops here
        dst.clear()
    self.answers.append((out['index'][leave], out['pred'][leave], i, out['logits'][leave]))
    self.stats['calls'][i] += 1
    self.stats['rows'][i] += e._bucket(take)
    self.stats['left'][i] += int(leave.sum())

  def pump(self, queues: dict[int, Queue], i: int, *, full_only: bool) -> None:
    """Runs exit i's queue in calls of batch_size rows until it holds fewer (full_only), or until it is empty
    (the last call then takes the remainder, padded up to a bucket)."""
    q, size = queues[i], self.engine.batch_size
    while q.count >= size or (q.count and not full_only):
      self.call(queues, i, min(q.count, size))

  def drain(self, queues: dict[int, Queue], *, full_only: bool) -> None:
    """Pumps the queues of one sequence length in exit order."""
    for i in sorted(queues):
      self.pump(queues, i, full_only=full_only)


def median_time(fn: Callable[[], Any], repeats: int = 3) -> float:
  """Median wall-clock seconds of fn() over `repeats` calls (fn must block until its results are ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
