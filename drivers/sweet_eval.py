"""Evaluation of an exit model (sweet, early_exit, multi_model): per-exit accuracy, temperatures, and the
speed-accuracy curve with measured adaptive-inference speedups (floor 3: encoder_jax, sweet_jax,
pipeline.data).

evaluate(...) writes WORKDIR/eval/:
  per_exit_accuracy.json  accuracy of every exit on the eval split
  temperatures.json       one temperature per exit, fit on the calibration split (never on the eval split)
  curve.json              {batch_size, method, rule, engine, timing_examples, points: [{threshold, accuracy,
                          layer_fraction, flops_fraction, exit_counts, measured_speedup, timed_flops_fraction,
                          engine_agreement, engine_ties, host_round_trips_per_1000}], tie_tolerance, ...}
  curve.csv, curve.png    the same points; the plot is accuracy against speedup
  predictions.npz         per exit and example: prediction and calibrated confidence, gold labels, costs
                          (drivers.predictions)
compare(workdirs, out_path) overlays several evaluated workdirs' curves.

Config fields read (all under config.eval, each with the default used when absent):
  batch_size (64)          batch size of evaluation and of the measured adaptive inference
  thresholds (() / None)   empty: sweet_jax.curves.default_thresholds (11 from 1/num_labels to 1)
  rule ('confidence')      'confidence' | 'entropy' | 'patience'; for 'patience' the thresholds ARE the patience
                           k (exit once k consecutive exits agree), so the default sweep is k = 1..num_exits
  timing_examples (1024)   the first this many eval examples are timed (0: all); accuracy uses all
  timing_repeats (3)       timed runs per point; the median speedup is reported
  engine ('stream')        sweet_jax.adaptive mode timed: 'stream' (continuous batching scheduled on the
                           device) | 'host_stream' (the same, scheduled by the host) | 'compact' | 'calm'
  tie_tolerance (None)     engine/sweep differences accepted as ties (below); None: sweet_jax.curves'
                           TIE_TOLERANCE of the encoder's dtype (1e-2 float32, 5e-2 bfloat16)

No calibration split (data.calibration_size = 0): temperatures must not be fit on the data that is scored,
so they stay 1 (plain softmax confidence), a warning says so, and temperatures.json records calibrated: false.

Which examples each figure of a point describes:
  accuracy, layer_fraction, flops_fraction, exit_counts   all eval examples (the offline sweep).
  measured_speedup(s), timed_flops_fraction               the timed examples (the first timing_examples; all
                          when 0 or when the split is no larger). measured_speedup is wall-clock of the full
                          model (embeddings, every layer up to the last exit, the last exit's head; multi_model:
                          its deepest member) over wall-clock of adaptive inference on the same eval batches at
                          config.eval.batch_size, compilation excluded (both are compiled before timing); each
                          repeat times the full model and then the engine back to back, and the median of the
                          per-repeat ratios is reported (measured_speedups: every repeat's ratio, the spread).
                          Compare it with 1 / timed_flops_fraction, the FLOPs-ideal speedup of exactly what was
                          timed (flops_fraction is that of all examples).
  engine_ties             timed examples the engine answered with another exit or prediction than the sweep
                          whose calibrated confidence (entropy) at some exit up to the later of the two lies
                          within tie_tolerance of the threshold, or whose top two probabilities lie within it:
                          float rounding in the engine's other batch shapes (TF32, bfloat16) may flip them. Any
                          other difference stops evaluate naming the threshold and the example (check_engine); an
                          example the engine did not answer is an error too, never left out.
  engine_agreement        1 - engine_ties / timed examples.
  host_round_trips_per_1000  reads of device results the engine waited for, per 1,000 timed examples.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from drivers import predictions
from pipeline import data, reporting, sharding
from pipeline.config_fields import get as _get
from sweet_jax import adaptive, calibration, curves, exits, objectives

_INPUT_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def forward_fn(method: str, encoder_config, exit_config, constants):
  """Jitted all-exit logits; without constants one per model config is kept (evaluate called again, e.g.
  for several workdirs, does not recompile)."""
  if constants is None:
    return _cached_forward_fn(method, encoder_config, exit_config)
  return _make_forward_fn(method, encoder_config, exit_config, constants)


@functools.lru_cache(maxsize=8)
def _cached_forward_fn(method, encoder_config, exit_config):
  return _make_forward_fn(method, encoder_config, exit_config, None)


def _make_forward_fn(method: str, encoder_config, exit_config, constants):
  if method == 'multi_model':
    return jax.jit(lambda p, b: exits.forward_multi_model(encoder_config, exit_config, p, b, constants=constants))
  if method in ('sweet', 'early_exit'):
    return jax.jit(lambda p, b: exits.forward(encoder_config, exit_config, p, b, stop_gradient=False,
                                              constants=constants))
  raise ValueError(f'sweet_eval evaluates exit models; unknown method {method!r} (choose from {objectives.METHODS}).')


def tokenized_batches(dataset, encode_fn, batch_size: int) -> list[dict[str, np.ndarray]]:
  """The dataset in order, as padded batches (pipeline.data.iterate_batches, no shuffling)."""
  return list(data.iterate_batches(dataset, encode_fn, batch_size, seed=0, epoch=0, shuffle=False))


def all_exit_logits(forward, params, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every exit's logits [E, N, C] float32, labels [N] and each example's padded length [N] (the length it is
  computed at), padding rows (example_mask 0) dropped."""
  logits, labels, lengths = [], [], []
  for batch in batches:
    keep = np.asarray(batch['example_mask']) > 0
    out = np.asarray(jax.device_get(forward(params, {k: batch[k] for k in _INPUT_KEYS})), np.float32)
    logits.append(out[:, keep])
    labels.append(np.asarray(batch['labels'])[keep])
    lengths.append(np.full(int(keep.sum()), batch['input_ids'].shape[1], np.int64))
  return np.concatenate(logits, 1), np.concatenate(labels), np.concatenate(lengths)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """config.eval's fields, with their defaults (module docstring), checked once."""
  batch_size: int = 64
  rule: str = 'confidence'
  thresholds: tuple[float, ...] | None = None  # None: curves.default_thresholds
  timing_examples: int = 1024
  timing_repeats: int = 3
  engine: str = 'stream'
  tie_tolerance: float | None = None  # None: curves.tie_tolerance of the encoder's dtype

  @classmethod
  def of(cls, config) -> 'EvalSettings':
    section, defaults = _get(config, 'eval'), cls()
    field = lambda name: _get(section, name, getattr(defaults, name))  # absent: the default above
    settings = cls(batch_size=int(field('batch_size')), rule=str(field('rule')),
                   thresholds=tuple(field('thresholds') or ()) or None,
                   timing_examples=int(field('timing_examples')),
                   timing_repeats=max(1, int(field('timing_repeats'))), engine=str(field('engine')),
                   tie_tolerance=None if field('tie_tolerance') is None else float(field('tie_tolerance')))
    if settings.tie_tolerance is not None and not 0 <= settings.tie_tolerance < 1:
      raise ValueError(f'config.eval.tie_tolerance must be in [0, 1), got {settings.tie_tolerance}.')
    curves.check_rule(settings.rule)
    if settings.engine not in adaptive.MODES:
      raise ValueError(f'config.eval.engine must be one of {adaptive.MODES}, got {settings.engine!r}.')
    return settings


def evaluate(config, workdir: str, *, method: str, encoder_config, exit_config: exits.ExitConfig, params,
             splits: data.Splits, encode_fn: Callable, constants=None,
             record: dict[str, Any] | None = None) -> dict[str, Any]:
  """Scores a trained exit model on splits.eval and writes WORKDIR/eval/ (see the module docstring).

  Args:
    config: the experiment ConfigDict (reads config.eval.*).
    method: 'sweet' | 'early_exit' | 'multi_model' (params in the matching layout).
    splits: pipeline.data.Splits; temperatures are fit on splits.calibration, accuracy on splits.eval.
    encode_fn: (texts_a, texts_b | None) -> dict of int32 [rows, seq] input_ids, attention_mask, token_type_ids.
    constants: PAPA constant attention matrices, when the encoder has constant heads.
    record: what the parameters were (pipeline.train_loop.scored_record: checkpoint step, run identity,
      code); written into every JSON output and the result.
  Returns:
    {'per_exit_accuracy': [E], 'temperatures': [E], 'points': [...], **record} (what the files hold).
  """
  es = EvalSettings.of(config)
  # Every process evaluates on its own devices (the adaptive engine times one device; only process 0 writes),
  # so params restored as global arrays over all hosts come to this host first. Then onto the device once:
  # numpy leaves would be copied in at every call (and distort the timing).
  params, constants = jax.device_put(sharding.host_local((params, constants)))
  forward = forward_fn(method, encoder_config, exit_config, constants)
  temps, temp_info = fit_temperatures(forward, params, splits.calibration, encode_fn, es.batch_size,
                                      exit_config.num_exits)

  eval_batches = tokenized_batches(splits.eval, encode_fn, es.batch_size)
  logits, labels, lengths = all_exit_logits(forward, params, eval_batches)
  per_exit = (logits.argmax(-1) == labels[None]).mean(-1)
  points = curves.sweep(logits, labels, temperatures=temps, encoder_config=encoder_config, exit_config=exit_config,
                        method=method, seq_lengths=lengths, thresholds=es.thresholds, rule=es.rule)

  # Wall-clock: the first timing_examples eval examples, already tokenized, at the eval batch size.
  n_time = len(labels) if es.timing_examples <= 0 else min(es.timing_examples, len(labels))
  if n_time == len(labels):
    timed, timed_logits, timed_lengths = eval_batches, logits, lengths
  else:
    timed = tokenized_batches(splits.eval.subset(np.arange(n_time)), encode_fn, es.batch_size)
    timed_logits, _, timed_lengths = all_exit_logits(forward, params, timed)
  engine = adaptive.AdaptiveEngine(encoder_config, exit_config, params, method=method, temperatures=temps,
                                   rule=es.rule, batch_size=es.batch_size, constants=constants)
  compile_s = engine.warmup({b['input_ids'].shape[1] for b in timed}, modes=(es.engine,))
  tolerance = curves.tie_tolerance(encoder_config.dtype) if es.tie_tolerance is None else es.tie_tolerance
  rows = [{**pt.summary(), **measure(engine, pt.threshold, timed, timed_logits, timed_lengths, mode=es.engine,
                                     repeats=es.timing_repeats, temperatures=temps, rule=es.rule,
                                     tie_tolerance=tolerance)} for pt in points]

  if jax.process_index() == 0:
    curve = {'batch_size': es.batch_size, 'method': method, 'rule': es.rule, 'engine': es.engine,
             'exit_layers': list(exit_config.exit_layers), 'eval_examples': len(labels),
             'timing_examples': n_time, 'timing_repeats': es.timing_repeats, 'compile_s': compile_s,
             'tie_tolerance': tolerance,
             'device': f'{jax.default_backend()} x{jax.device_count()}', 'points': rows}
    _write_outputs(os.path.join(workdir, 'eval'), per_exit, temp_info, curve, record or {})
    # Per-example outputs beside the curve, for paired tests and dense offline sweeps (drivers.predictions).
    predictions.save_eval(os.path.join(workdir, 'eval'), logits, labels, temps, seq_lengths=lengths,
                          test_set=splits.eval, params=params, encoder_config=encoder_config,
                          exit_config=exit_config, method=method)
  return {'per_exit_accuracy': per_exit.tolist(), 'temperatures': temps.tolist(), 'points': rows, **(record or {})}


def fit_temperatures(forward, params, calibration_split, encode_fn, batch_size: int, num_exits: int
                     ) -> tuple[np.ndarray, dict[str, Any]]:
  """One temperature per exit, fit on the held-out calibration split only: -> ([E] float, what
  temperatures.json holds). Without a calibration split they stay 1, with a warning (never fit on eval)."""
  if calibration_split is None or not len(calibration_split):
    logging.warning('*** No calibration split (data.calibration_size = 0): temperatures are NOT fit and stay 1. '
                    'They must not be fit on the eval split that is scored; set data.calibration_size > 0 to '
                    'hold out part of the training data for them. ***')
    temps = np.ones(num_exits, np.float32)
    return temps, {'temperatures': temps.tolist(), 'calibrated': False, 'calibration_examples': 0}
  cal_logits, cal_labels, _ = all_exit_logits(forward, params,
                                              tokenized_batches(calibration_split, encode_fn, batch_size))
  temps = calibration.fit_temperatures(cal_logits, cal_labels)
  return temps, {'temperatures': temps.tolist(), 'calibrated': True, 'calibration_examples': len(cal_labels),
                 'nll_at_1': calibration.nll(cal_logits, cal_labels, np.ones(len(temps))).tolist(),
                 'nll_fitted': calibration.nll(cal_logits, cal_labels, temps).tolist()}


def _write_outputs(out_dir: str, per_exit: np.ndarray, temp_info: dict[str, Any], curve: dict[str, Any],
                   record: dict[str, Any]) -> None:
  """WORKDIR/eval/: per_exit_accuracy.json, temperatures.json, curve.json (each with `record`), curve.csv and
  curve.png."""
  os.makedirs(out_dir, exist_ok=True)
  reporting.write_json(os.path.join(out_dir, 'per_exit_accuracy.json'),
                       {'method': curve['method'], 'exit_layers': curve['exit_layers'], 'accuracy': per_exit.tolist(),
                        'examples': curve['eval_examples'], **record})
  reporting.write_json(os.path.join(out_dir, 'temperatures.json'), {**temp_info, **record})
  reporting.write_json(os.path.join(out_dir, 'curve.json'), {**curve, **record})
  _write_csv(os.path.join(out_dir, 'curve.csv'), curve['points'])
  label = f"{curve['method']} ({curve['engine']}, batch {curve['batch_size']})"
  plot_curves([(label, curve)], os.path.join(out_dir, 'curve.png'))


def measure(engine: adaptive.AdaptiveEngine, threshold: float, batches, logits, lengths, *, mode: str,
            repeats: int, temperatures, rule: str, tie_tolerance: float = 0.0) -> dict[str, float]:
  """One curve point's figures on the timed examples: measured_speedup, timed_flops_fraction, engine_agreement,
  engine_ties, host_round_trips_per_1000.

  batches: the timed batches (padding rows marked by example_mask 0); logits [E, N, C], lengths [N]: their
  real rows' all-exit logits and padded lengths (all_exit_logits). Raises (check_engine) unless the engine
  answered every example as the offline sweep does, or differs only in ties within tie_tolerance.
  """
  ratios = []
  for _ in range(repeats):
    start = time.perf_counter()
    engine.run_full(batches)
    full_s = time.perf_counter() - start
    start = time.perf_counter()
    res = engine.run(batches, threshold, mode=mode)
    ratios.append(full_s / (time.perf_counter() - start))
  want_exit, want_pred = map(np.asarray, curves.assign_exits(logits, temperatures, threshold, rule=rule))
  near = curves.borderline(logits, temperatures, threshold, rule, tie_tolerance)
  tied = check_engine(res, np.concatenate([np.asarray(b['example_mask']) > 0 for b in batches]), want_exit,
                      want_pred, threshold, borderline=near)
  _, flops = curves.cost_fractions(want_exit, encoder_config=engine.encoder_config, exit_config=engine.exit_config,
                                   method=engine.method, seq_lengths=lengths)
  return {'measured_speedup': float(np.median(ratios)), 'measured_speedups': [float(r) for r in ratios],
          'timed_flops_fraction': flops, 'engine_agreement': 1.0 - tied / len(want_exit), 'engine_ties': tied,
          'host_round_trips_per_1000': res.stats['host_round_trips_per_1000']}


def check_engine(result: adaptive.Result, real: np.ndarray, want_exit: np.ndarray, want_pred: np.ndarray,
                 threshold: float, *, borderline: np.ndarray | None = None) -> int:
  """Raises unless the adaptive engine answered every real example as the offline sweep does, up to ties.

  result: the engine's answers over all rows [R] of the timed batches (padding rows included); real: bool [R],
  example_mask > 0; want_exit, want_pred: int [N] the sweep's exits and predictions of the N real rows;
  borderline: bool [E, N] (curves.borderline) where a decision or prediction of the sweep lies within the tie
  tolerance, or None (no ties accepted). A difference is a tie (counted, returned) when some exit up to the
  later of the two exits is borderline: the engine computes in other batch shapes, so float rounding of a
  score on the threshold may go either way. Any other difference is an engine bug and raises naming the
  example: the curve point would not describe what ran.
  """
  got_exit, got_pred = result.exit_index[real], result.predictions[real]
  lost = np.flatnonzero(got_exit < 0)
  if lost.size:
    raise RuntimeError(f'At threshold {threshold:g} the adaptive engine did not answer {lost.size} of {real.sum()} '
                       f'timed examples (the first: example {lost[0]}).')
  if np.any(result.exit_index[~real] >= 0):
    raise RuntimeError(f'At threshold {threshold:g} the adaptive engine answered padding rows (example_mask 0).')
  differ = (got_exit != want_exit) | (got_pred != want_pred)
  tie = np.zeros_like(differ) if borderline is None else curves.ties(borderline, got_exit, want_exit)
  wrong = np.flatnonzero(differ & ~tie)
  if wrong.size:
    k = wrong[0]
    raise RuntimeError(f'At threshold {threshold:g} the adaptive engine and the offline sweep disagree on '
                       f'{wrong.size} of {real.sum()} timed examples beyond the tie tolerance (the first: example '
                       f'{k}, engine exit {got_exit[k]} prediction {got_pred[k]}, sweep exit {want_exit[k]} '
                       f'prediction {want_pred[k]}).')
  return int(np.sum(differ & tie))


def _write_csv(path, rows):
  fields = ['threshold', 'accuracy', 'layer_fraction', 'flops_fraction', 'measured_speedup', 'timed_flops_fraction',
            'exit_counts', 'engine_agreement', 'engine_ties', 'host_round_trips_per_1000']
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(fields)
    for r in rows:
      writer.writerow([';'.join(map(str, r[k])) if k == 'exit_counts' else r[k] for k in fields])


def plot_curves(curves_: Sequence[tuple[str, dict[str, Any]]], path: str) -> None:
  """Accuracy against measured speedup (left) and against the paper's layer-based speedup, 1 / layer_fraction,
  with the FLOPs-ideal 1 / flops_fraction dotted (right), one line per (label, curve.json dict)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for k, (label, curve) in enumerate(curves_):
    pts = sorted(curve['points'], key=lambda p: p['layer_fraction'])
    color = f'C{k}'
    acc = [p['accuracy'] for p in pts]
    ax_m.plot([p['measured_speedup'] for p in pts], acc, '-o', color=color, label=label, ms=4)
    ax_l.plot([1 / p['layer_fraction'] for p in pts], acc, '-o', color=color, label=f'{label}: layers', ms=4)
    ax_l.plot([1 / p['flops_fraction'] for p in pts], acc, ':', color=color, label=f'{label}: FLOPs ideal')
  ax_m.set_xlabel('measured speedup (wall-clock, full model = 1)')
  ax_l.set_xlabel('speedup from fraction of layers run (paper); dotted: 1 / FLOPs fraction')
  ax_m.set_ylabel('accuracy')
  for ax in (ax_m, ax_l):
    ax.axvline(1.0, color='grey', lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


LAYER_BUDGETS = (0.25, 0.33, 0.5, 0.75, 1.0)
SPEEDUP_FLOORS = (4.0, 3.0, 2.0, 1.5)


def best_accuracy(points: Sequence[dict[str, Any]], key: str, bound: float, *, at_least: bool) -> float | None:
  """The best accuracy among curve points whose `key` is <= bound (or >= bound with at_least); None if none.

  E.g. key 'layer_fraction', bound 0.5: the most accurate threshold that runs at most half the layers."""
  ok = [p['accuracy'] for p in points if (p[key] >= bound if at_least else p[key] <= bound + 1e-9)]
  return max(ok) if ok else None


def budget_table(curves_: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """A markdown table: per curve, the best accuracy within each layer budget (the paper's axis) and at each
  measured speedup floor; methods are compared at equal cost, not at equal threshold."""
  cols = [('layer_fraction', b, False, f'layers <= {b:g}') for b in LAYER_BUDGETS] + [
      ('measured_speedup', f, True, f'speedup >= {f:g}x') for f in SPEEDUP_FLOORS]
  fmt = lambda a: '-' if a is None else f'{a:.3f}'
  rows = [[label, *(fmt(best_accuracy(curve['points'], key, bound, at_least=ge)) for key, bound, ge, _ in cols)]
          for label, curve in curves_]
  return reporting.markdown_table(['run', *(c[3] for c in cols)], rows)


def compare(workdirs: Sequence[str], out_path: str) -> None:
  """Overlays the curves of evaluated workdirs (each WORKDIR/eval/curve.json) in one plot at out_path, and
  prints and writes beside it (same name, .md) the best accuracy of each at equal cost (budget_table)."""
  found = []
  for w in workdirs:
    path = os.path.join(w, 'eval', 'curve.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} does not exist: run eval.py --workdir {w} first.')
    with open(path) as f:
      curve = json.load(f)
    found.append((f'{os.path.basename(os.path.normpath(w))} [{curve["method"]}]', curve))
  if os.path.dirname(out_path):
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
  plot_curves(found, out_path)
  table = budget_table(found)
  with open(os.path.splitext(out_path)[0] + '.md', 'w') as f:
    f.write(table)
  print(table, end='')
