"""A trained exit model on new text (floor 3: methods, pipeline, sweet_jax, sweet_eval): real early exit.

  p = Predictor(config, 'runs/sweet_demo', threshold=0.85)      # params on the device once
  for row in p(['a gripping film', 'two dull hours']):          # or pairs: [('premise', 'hypothesis'), ...]
    print(row['label'], row['confidence'], row['exit'])

The workdir must hold a checkpoint (train.py). Temperatures come from WORKDIR/eval/temperatures.json (fit
by eval.py on the held-out calibration split) and are never refit here; without them (never evaluated)
they are 1 and a warning says so. The exit rule is the evaluated curve's (WORKDIR/eval/curve.json), else
config.eval.rule. max_accuracy_drop picks the fastest evaluated threshold within that many accuracy points
of the full model (choose_threshold). Inference runs sweet_jax.adaptive's engine (compiled programs are
cached per batch bucket and sequence length, so the first call compiles and later calls do not).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

import encoder_jax
from drivers import methods
from drivers import sweet_eval
from pipeline import data, fingerprint, reporting, sharding, train_loop
from pipeline.config_fields import get as _get
from sweet_jax import adaptive, curves


class WorkdirError(FileNotFoundError):
  """A workdir that does not exist, or lacks what was asked of it (a checkpoint, an evaluation)."""


def _read_json(path: str, what: str, hint: str) -> dict[str, Any]:
  if not os.path.exists(path):
    raise WorkdirError(f'{path} does not exist: {what}. {hint}')
  with open(path) as f:
    return json.load(f)


def text_fields(config) -> tuple[str, ...]:
  """config.data.text_fields as a tuple: 1 field (single texts) or 2 (pairs); pipeline.data checks it."""
  return data.text_fields(_get(config, 'data'))


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained exit model restored from a workdir. params: host-local, in built.method's layout."""
  built: methods.Built
  params: Any
  label_names: tuple[str, ...]
  method: str
  record: dict[str, Any] | None = None  # train_loop.scored_record: the checkpoint step, run identity, code


def load_trained(config, workdir: str) -> Trained:
  """The latest checkpoint of workdir with the model config.model describes, and its label names (from
  WORKDIR/results.json, which train.py writes; else from the training data)."""
  if not os.path.isdir(workdir):
    raise WorkdirError(f'{workdir}: no such workdir (train first: python train.py --config ... --workdir {workdir}).')
  if config.method not in methods.EXIT_METHODS:
    raise ValueError(f'Prediction serves exit models {methods.EXIT_METHODS}; config.method is {config.method!r}.')
  results = os.path.join(workdir, 'results.json')
  names = None
  if os.path.exists(results):
    with open(results) as f:
      names = json.load(f).get('label_names')
  if not names:  # an interrupted or older run: the labels are those of the training data
    names = data.load_splits(config.data).train.label_names
  built = methods.build(config, num_labels=len(names))
  restored = train_loop.restore(config, workdir, built.method,
                                fingerprint.model_check(config, built.constants_record, workdir))
  params = sharding.host_local(restored.state)
  return Trained(built, params, tuple(str(n) for n in names), config.method, train_loop.scored_record(restored))


def choose_threshold(curve: dict[str, Any], full_accuracy: float, max_drop: float) -> tuple[float, str]:
  """The fastest evaluated threshold whose accuracy is within max_drop points (percent) of the full model's.

  Fastest = the fewest FLOPs per example (flops_fraction: deterministic, unlike a measured speedup, and
  what the engine saves); ties go to the more accurate point. Returns (threshold, a sentence saying why).
  """
  if max_drop < 0:
    raise ValueError(f'max_accuracy_drop must be >= 0 points, got {max_drop}.')
  floor = full_accuracy - max_drop / 100.0
  ok = [p for p in curve['points'] if p['accuracy'] >= floor - 1e-12]
  if not ok:
    raise ValueError(f'No evaluated threshold has accuracy >= {floor:.4f} (the full model\'s {full_accuracy:.4f} '
                     f'minus {max_drop} points); evaluate more thresholds (config.eval.thresholds) or allow more.')
  best = min(ok, key=lambda p: (p['flops_fraction'], -p['accuracy']))
  speed = f', measured speedup {best["measured_speedup"]:.2f}x' if 'measured_speedup' in best else ''
  why = (f'threshold {best["threshold"]:g} ({curve.get("rule", "confidence")} rule): accuracy {best["accuracy"]:.4f} '
         f'against the full model\'s {full_accuracy:.4f} (a drop of {100 * (full_accuracy - best["accuracy"]):.2f} '
         f'points, allowed {max_drop:g}), {best["layer_fraction"]:.0%} of the layers and {best["flops_fraction"]:.0%} '
         f'of the FLOPs{speed}: the cheapest of the {len(ok)} of {len(curve["points"])} evaluated thresholds '
         'within the allowed drop.')
  return float(best['threshold']), why


def _softmax(z: np.ndarray) -> np.ndarray:
  """Over the last axis, in float64."""
  z = np.exp(np.asarray(z, np.float64) - np.max(z, -1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


@dataclasses.dataclass
class Predictions:
  """What a Predictor call returns; arrays over the N inputs, in input order.

  label_ids, exit_index, layers: int [N]; confidence: float [N] (the probability of the predicted label at
  the exit it left at, with that exit's temperature); truncated: bool [N] (longer than the model's length);
  seq_lengths: int [N], the padded length each was computed at; all_probabilities: float [E, N, C] or None.
  """
  label_names: tuple[str, ...]
  label_ids: np.ndarray
  confidence: np.ndarray
  exit_index: np.ndarray
  layers: np.ndarray
  truncated: np.ndarray
  seq_lengths: np.ndarray
  seconds: float
  all_probabilities: np.ndarray | None = None
  engine_ties: int = 0  # with all_exits: inputs whose engine answer differs from the sweep's by a tie

  def __len__(self) -> int:
    return len(self.label_ids)

  def row(self, i: int) -> dict[str, Any]:
    out = {'label': self.label_names[self.label_ids[i]], 'confidence': float(self.confidence[i]),
           'exit': int(self.exit_index[i]), 'layer': int(self.layers[i])}
    if self.all_probabilities is not None:
      out['probabilities'] = np.round(self.all_probabilities[:, i], 6).tolist()
    return out

  def __iter__(self):
    return (self.row(i) for i in range(len(self)))


class Predictor:
  """A trained exit model, ready for text: built once, called many times.

  Args:
    config: the experiment ConfigDict the workdir was trained with.
    workdir: the training workdir (checkpoints/, results.json, and eval/ once eval.py ran).
    threshold: the exit threshold (rule: the evaluated curve's, else config.eval.rule); or
    max_accuracy_drop: points of accuracy the full model may lose (picks the threshold; needs eval/).
    batch_size: the engine's batch size (default config.eval.batch_size).
    mode: the engine's mode (sweet_jax.adaptive.MODES); 'stream' (scheduled on the device) by default.
    tie_tolerance: with all_exits, engine/sweep differences accepted as ties (sweet_eval.check_engine);
      None: sweet_jax.curves.tie_tolerance of the encoder's dtype.
  Attributes: threshold, rule, temperatures [E], why (how the threshold was picked), exit_layers.
  """

  def __init__(self, config, workdir: str, *, threshold: float | None = None, max_accuracy_drop: float | None = None,
               batch_size: int | None = None, mode: str = 'stream', tie_tolerance: float | None = None):
    if (threshold is None) == (max_accuracy_drop is None):
      raise ValueError('Give exactly one of threshold and max_accuracy_drop.')
    trained = load_trained(config, workdir)
    built = trained.built
    self.config, self.built, self.label_names, self.method = config, built, trained.label_names, trained.method
    self.record = trained.record  # what every prediction output records about the parameters it used
    self.exit_layers = built.exit_config.exit_layers
    self.fields = text_fields(config)
    eval_dir = os.path.join(workdir, 'eval')
    self.temperatures, self.rule, self.why = self._calibration(eval_dir, config)
    if max_accuracy_drop is not None:
      hint = f'Run python eval.py --config ... --workdir {workdir} first, or pass a threshold.'
      curve = _read_json(os.path.join(eval_dir, 'curve.json'), 'this workdir was never evaluated', hint)
      full = _read_json(os.path.join(eval_dir, 'per_exit_accuracy.json'), 'this workdir was never evaluated', hint)
      self._check_layers(curve, os.path.join(eval_dir, 'curve.json'))
      threshold, self.why = choose_threshold(curve, full['accuracy'][-1], max_accuracy_drop)
    self.threshold = float(threshold)
    self.batch_size = int(batch_size or _get(_get(config, 'eval'), 'batch_size', 64))
    self.mode = mode
    self.tie_tolerance = (curves.tie_tolerance(built.encoder_config.dtype) if tie_tolerance is None
                          else float(tie_tolerance))
    params, constants = jax.device_put((trained.params, built.constants))  # onto the device once
    self.params, self.constants = params, constants
    self.engine = adaptive.AdaptiveEngine(built.encoder_config, built.exit_config, params, method=self.method,
                                          temperatures=self.temperatures, rule=self.rule,
                                          batch_size=self.batch_size, constants=constants)
    self.tokenizer = encoder_jax.load_tokenizer(config.model.checkpoint)  # to count truncated texts

  def _check_layers(self, evaluated: dict[str, Any], path: str) -> None:
    layers = evaluated.get('exit_layers')
    if layers is not None and tuple(layers) != self.exit_layers:
      raise ValueError(f'{path} was written for exits after layers {tuple(layers)}, but this model has them after '
                       f'{self.exit_layers}: evaluate this model again (eval.py).')

  def _calibration(self, eval_dir: str, config) -> tuple[np.ndarray, str, str]:
    """(temperatures [E], rule, a note) from eval.py's files; ones and config.eval.rule when never evaluated."""
    rule = str(_get(_get(config, 'eval'), 'rule', 'confidence'))
    curve_path = os.path.join(eval_dir, 'curve.json')
    if os.path.exists(curve_path):
      with open(curve_path) as f:
        rule = json.load(f).get('rule', rule)
    path = os.path.join(eval_dir, 'temperatures.json')
    num_exits = len(self.exit_layers)
    if not os.path.exists(path):
      logging.warning('%s does not exist (the workdir was never evaluated): temperatures are 1, so confidences '
                      'are plain softmax probabilities. Run eval.py to calibrate them.', path)
      return np.ones(num_exits, np.float32), rule, 'uncalibrated (temperatures 1)'
    with open(path) as f:
      temps = np.asarray(json.load(f)['temperatures'], np.float32)
    if temps.shape != (num_exits,):
      raise ValueError(f'{path} holds {temps.size} temperatures; the model has {num_exits} exits.')
    return temps, rule, f'temperatures from {path}'

  def _check(self, inputs: Sequence) -> tuple[list[str], list[str] | None]:
    """texts (or pairs) -> (first texts, second texts or None), each a non-empty str."""
    pair = len(self.fields) == 2
    firsts, seconds = [], ([] if pair else None)
    for i, x in enumerate(inputs):
      parts = tuple(x) if pair and isinstance(x, (tuple, list)) else (x,)
      if len(parts) != len(self.fields):
        raise ValueError(f'input {i}: the model reads {len(self.fields)} text(s) {self.fields} per example, '
                         f'got {x!r}.')
      for field, t in zip(self.fields, parts):
        if not isinstance(t, str) or not t.strip():
          raise ValueError(f'input {i}: {field!r} is {t!r}, not a non-empty text.')
      firsts.append(parts[0])
      if pair:
        seconds.append(parts[1])
    return firsts, seconds

  def __call__(self, inputs: Sequence, *, all_exits: bool = False, progress: bool = False) -> Predictions:
    """Predicts texts (or (text, text) pairs when the config has two text fields), in input order.

    all_exits: also every exit's probabilities [E, N, C] (runs the full all-exit model besides the engine),
      and checks the engine's answers against the offline sweep of those logits: a difference that is not a
      tie within tie_tolerance raises naming the input (sweet_eval.check_engine); ties are counted.
    """
    firsts, seconds = self._check(inputs)
    n = len(firsts)
    if n == 0:
      raise ValueError('No inputs to predict.')
    texts = (firsts,) if seconds is None else (firsts, seconds)
    dataset = data.TextDataset(texts, np.zeros(n, np.int32), self.label_names, 'inputs')
    lengths, truncated, logits_all = [], [], []
    forward = (sweet_eval.forward_fn(self.method, self.built.encoder_config, self.built.exit_config, self.constants)
               if all_exits else None)
    bar = reporting.progress(n, desc='predict') if progress else None

    def batches():  # tokenized lazily, as the engine asks for them; side records per batch
      start = 0
      for batch in data.iterate_batches(dataset, self.built.encode_fn, self.batch_size, seed=0, epoch=0,
                                        shuffle=False):
        rows = int(batch['example_mask'].sum())
        a, b = firsts[start:start + rows], None if seconds is None else seconds[start:start + rows]
        full = self.tokenizer(a, b, truncation=False, verbose=False)['input_ids']
        truncated.append(np.array([len(t) for t in full]) > batch['attention_mask'][:rows].sum(-1))
        lengths.append(np.full(rows, batch['input_ids'].shape[1]))
        if forward is not None:
          logits_all.append(sweet_eval.all_exit_logits(forward, self.params, [batch])[0])
        start += rows
        if bar is not None:
          bar.update(rows)
        yield batch

    began = time.perf_counter()
    result = self.engine.run(batches(), self.threshold, mode=self.mode)
    seconds = time.perf_counter() - began
    if bar is not None:
      bar.close()
    # The padded last batch's extra rows come back with exit -1 after the n real ones.
    exit_index, label_ids = result.exit_index[:n], result.predictions[:n]
    if np.any(exit_index < 0):
      raise RuntimeError(f'The engine left {int((exit_index < 0).sum())} of {n} inputs unanswered.')
    probs = _softmax(result.logits[:n] / self.temperatures[exit_index][:, None])
    all_probs, ties = None, 0
    if all_exits:
      logits = np.concatenate(logits_all, 1)
      all_probs = _softmax(logits / self.temperatures[:, None, None])
      ties = self._check_engine(result, logits, n)
    return Predictions(self.label_names, label_ids, probs[np.arange(n), label_ids], exit_index,
                       np.asarray(self.exit_layers)[exit_index], np.concatenate(truncated), np.concatenate(lengths),
                       seconds, all_probs, ties)

  def _check_engine(self, result: adaptive.Result, logits: np.ndarray, n: int) -> int:
    """Ties between the engine's answers and the offline sweep of every exit's logits [E, n, C] (raises on any
    other difference, naming the input)."""
    want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, self.temperatures, self.threshold,
                                                               rule=self.rule))
    near = curves.borderline(logits, self.temperatures, self.threshold, self.rule, self.tie_tolerance)
    real = np.arange(len(result.exit_index)) < n  # the padded last batch's extra rows come after the n inputs
    return sweet_eval.check_engine(result, real, want_exit, want_pred, self.threshold, borderline=near)

  def summary(self, predictions: Predictions) -> dict[str, Any]:
    """examples, examples/s, the share of layers (and FLOPs) run relative to the full model, exit counts,
    truncated texts."""
    layer_fraction, flops_fraction = curves.cost_fractions(
        predictions.exit_index, encoder_config=self.built.encoder_config, exit_config=self.built.exit_config,
        method=self.method, seq_lengths=predictions.seq_lengths)
    n = len(predictions)
    return {'examples': n, 'examples_per_s': n / max(predictions.seconds, 1e-9), 'seconds': predictions.seconds,
            'layer_fraction': layer_fraction, 'flops_fraction': flops_fraction,
            'exit_counts': np.bincount(predictions.exit_index, minlength=len(self.exit_layers)).tolist(),
            'exit_layers': list(self.exit_layers), 'truncated': int(predictions.truncated.sum()),
            'threshold': self.threshold, 'rule': self.rule, 'engine_ties': predictions.engine_ties}


# ----------------------------------------------------------------------------------------------- input files

@dataclasses.dataclass(frozen=True)
class Inputs:
  """Examples read from a file: texts, one tuple of N strings per text field; where[i] names row i in messages
  ('line 7'); lines[i] its 1-based line in the file, or None where the format has no lines (parquet, a JSON
  array)."""
  origin: str
  texts: tuple[tuple[str, ...], ...]
  where: tuple[str, ...]
  lines: tuple[int | None, ...]

  def examples(self) -> list:
    """What a Predictor takes: strings, or (first, second) pairs."""
    return list(self.texts[0]) if len(self.texts) == 1 else list(zip(*self.texts))


def _text_lines(origin: str, text: str, fields: tuple[str, ...]) -> Inputs:
  """One example per line; pairs as two texts separated by a tab. Every line is an example."""
  rows = text.split('\n')
  if rows and rows[-1] == '':
    rows.pop()  # the newline that ends the last line
  columns = [[] for _ in fields]
  for n, row in enumerate(rows, 1):
    parts = row.rstrip('\r').split('\t') if len(fields) == 2 else [row.rstrip('\r')]
    if len(parts) != len(fields):
      raise data.DataError(f'{origin}: line {n} has {len(parts)} tab-separated text(s); the model reads a pair '
                           f'{fields} per line.')
    for column, part in zip(columns, parts):
      column.append(part)
  return _checked(origin, columns, fields, [f'line {n}' for n in range(1, len(rows) + 1)],
                  list(range(1, len(rows) + 1)))


def _checked(origin: str, columns, fields, where, lines) -> Inputs:
  """Every cell a non-empty str, or an error naming the file, row and field."""
  if not where:
    raise data.EmptySplitError(f'{origin}: no examples to predict.')
  for field, column in zip(fields, columns):
    for i, value in enumerate(column):
      if value is data.MISSING:  # a jsonl row without the field
        raise data.MissingColumnError(f'{origin}: {where[i]} has no field {field!r}.')
      if not isinstance(value, str) or not value.strip():
        raise data.BadTextError(f'{origin}: {where[i]}: {field!r} is {value!r}, not a non-empty text.')
  return Inputs(origin, tuple(tuple(c) for c in columns), tuple(where), tuple(lines))


def read_inputs(path: str, fields: Sequence[str], stdin=None) -> Inputs:
  """Examples from a .csv/.tsv/.jsonl/.json/.parquet file (pipeline.data's readers; columns named by the
  config's text fields), a .txt file (one example per line, a tab between the texts of a pair), or
  path '-' (the lines of stdin, as .txt)."""
  fields = tuple(fields)
  if path == '-':
    return _text_lines('<stdin>', (stdin or sys.stdin).read(), fields)
  try:
    if path.lower().endswith('.txt'):
      if not os.path.isfile(path):
        raise data.DataFileNotFoundError(f'{path}: no such input file.')
      raw = pathlib.Path(path).read_bytes()
      return _text_lines(path, data.decode_text(raw, path, ('utf-8-sig',)), fields)
    table = data.read_file(path)
  except PermissionError as e:
    raise data.DataError(f'{path}: cannot be read ({e.strerror}).') from None
  missing = [f for f in fields if f not in table.columns]
  if missing:
    raise data.MissingColumnError(f'{table.origin}: no column {missing[0]!r} (data.text_fields); columns present: '
                                  f'{", ".join(map(repr, table.columns)) or "none"}.')
  where = [table.where(i) for i in range(table.num_rows)]
  lines = table.lines if table.lines is not None else [None] * table.num_rows
  return _checked(table.origin, [table.columns[f] for f in fields], fields, where, lines)
