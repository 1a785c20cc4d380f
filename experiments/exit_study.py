"""What SWEET studies A and B share: a training-plus-evaluation cell, its small raw JSON, the tables
(per-exit accuracy and best accuracy within each layer budget, mean ± std over seeds), the speed-accuracy
figures with a band over seeds, and the README skeleton.

A run's raw JSON (docs/results/<study>/runs/<cell>.json) keeps from WORKDIR/results.json the per-exit
accuracy, exit layers, eval and train sizes, steps and training time; from WORKDIR/eval/curve.json the
device, timing settings and each point's threshold, accuracy, layer and FLOPs fraction and measured speedup;
the run's fingerprint (data and model identity), and from WORKDIR/eval/predictions.npz the hashes of the test set
and the weights scored (the file itself is copied beside the raw JSON).
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Iterable, Sequence

import numpy as np

from drivers import predictions
from experiments import budgets, common, paired
from experiments.stats import Spread
from pipeline.reporting import markdown_table

POINT_FIELDS = ('threshold', 'accuracy', 'layer_fraction', 'flops_fraction', 'measured_speedup')
# Timed repeats per threshold: the speedup is their median (sweet_eval.measure). One timing moved by up to 36%
# between sittings (docs/results/sweet_study_a/timing_spread.json), so cells evaluated from now on time five.
TIMING_REPEATS = 5
PREDICTIONS_SUFFIX = paired.SUFFIX  # runs/<cell>.predictions.npz: per-example outputs (drivers.predictions)
SPREAD_FIELDS = ('measured_speedups',)  # every timed repeat's speedup, where eval recorded them
CURVE_FIELDS = ('device', 'engine', 'batch_size', 'timing_examples', 'timing_repeats', 'rule')


def exit_cell(name: str, config_path: str, flags: Sequence[str], labels: dict[str, Any], work_root: str
              ) -> common.Cell:
  """train.py then eval.py on one workdir (work_root/name), with the same config and overrides."""
  workdir = os.path.join(work_root, name)
  args = ('--config', config_path, '--workdir', workdir, *flags)
  return common.Cell(name, os.path.join(common.ROOT, workdir), (
      common.Step('train', ('train.py', *args), 'results.json'),
      common.Step('eval', ('eval.py', *args), os.path.join('eval', 'curve.json'))), labels)


def extract(cell: common.Cell) -> dict[str, Any]:
  """The fields the tables and figures need, from the cell's results.json and eval/curve.json."""
  res = common.read_json(os.path.join(cell.workdir, 'results.json'))
  curve = common.read_json(os.path.join(cell.workdir, 'eval', 'curve.json'))
  out = {'method': res['method'], 'seed': res['seed'], 'exit_layers': res['exit_layers'],
         'per_exit_accuracy': res['per_exit_accuracy'], 'eval_examples': res['num_examples'],
         'num_train_examples': res['num_train_examples'], 'steps': res['steps'],
         'train_time_s': res['train_time_s'], 'fingerprint': res.get('fingerprint'),
         'curve': dict({k: curve.get(k) for k in CURVE_FIELDS},
                       points=[{k: p[k] for k in POINT_FIELDS + SPREAD_FIELDS if k in p} for p in curve['points']])}
  return out | predictions_attachment(os.path.join(cell.workdir, 'eval', 'predictions.npz'))


def predictions_attachment(path: str) -> dict[str, Any]:
  """The hashes of an evaluation's predictions.npz (the test set and the weights scored), and the file to
  copy beside the raw JSON as runs/<cell>.predictions.npz; {} when the evaluation wrote none."""
  if not os.path.exists(path):
    return {}
  with np.load(path, allow_pickle=False) as z:
    hashes = {'test_set_sha256': str(z['test_sha256']), 'params_sha256': str(z['params_sha256'])}
  return {'hashes': hashes, common.ATTACH: {PREDICTIONS_SUFFIX: path}}


def eval_thresholds(num_labels: int, count: int = 7) -> tuple[float, ...]:
  """The studies' confidence thresholds: `count` from just above chance to 1, denser near 1, where the
  early-exit decisions change most (the demo times 11 evenly spaced ones)."""
  lo = round(1.0 / num_labels + 0.01, 2)
  return tuple(round(float(t), 3) for t in lo + (1 - lo) * (1 - np.linspace(1, 0, count) ** 2))


def groups(runs: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
  """Runs grouped by their labels' values at keys, each group sorted by seed."""
  out = collections.defaultdict(list)
  for r in runs:
    out[tuple(r['labels'][k] for k in keys)].append(r)
  return {k: sorted(v, key=lambda r: r['labels']['seed']) for k, v in sorted(out.items())}


def common_seeds(*group_runs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  """Each group cut to the seeds all of them have, in seed order (so differences pair by seed)."""
  seeds = set.intersection(*({r['labels']['seed'] for r in g} for g in group_runs))
  return [[r for r in g if r['labels']['seed'] in seeds] for g in group_runs]


def per_exit_table(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
  """Markdown: one row per group (keys' values), one column per exit: accuracy mean ± std over seeds."""
  grouped = groups(runs, keys)
  layers = max((tuple(r['exit_layers']) for r in runs), key=len)
  rows = []
  for key, g in grouped.items():
    accs = np.array([r['per_exit_accuracy'] for r in g])
    rows.append([*key, len(g), *(Spread.of(accs[:, e]).fmt() for e in range(accs.shape[1]))])
  return markdown_table([*keys, 'seeds', *(f'exit L{l}' for l in layers)], rows)


def at_budget(run: dict[str, Any], budget: float, cost: str = 'layer_fraction') -> float | None:
  """The run's accuracy at `budget` of `cost`, interpolated along its curve's frontier (experiments.budgets);
  None below its cheapest point."""
  return budgets.accuracy_at(curve_points(run, cost), cost, budget)


def curve_points(run: dict[str, Any], cost: str = 'layer_fraction') -> Sequence[dict[str, Any]]:
  """The curve a run is read from at a budget: for layer and FLOPs fractions, the dense offline sweep of its
  stored outputs (101 thresholds, drivers.predictions.dense_curve) when it has them; else, and for measured
  speedups (timed at the evaluated thresholds only), the evaluated points."""
  path = paired.outputs_path(run)
  return _dense_curve(path) if path and cost != 'time_fraction' else run['curve']['points']


def read_alike(*groups: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  """The groups' runs as a summary comparison must read them: each from its dense sweep when every run has stored
  outputs, else each from its evaluated thresholds (a run's outputs set aside). The dense sweep interpolates a
  finer frontier than the evaluated grid, so reading one side densely would favour it."""
  if all(paired.outputs_path(run) for g in groups for run in g):
    return [list(g) for g in groups]
  return [[{**run, 'attachments': {k: v for k, v in run.get('attachments', {}).items() if k != PREDICTIONS_SUFFIX}}
           for run in g] for g in groups]


@functools.lru_cache(maxsize=64)
def _dense_curve(path: str) -> tuple[dict[str, float], ...]:
  return tuple(predictions.dense_curve(predictions.Predictions.load(path)))


def budget_table(runs: Sequence[dict[str, Any]], keys: Sequence[str],
                 columns: Sequence[tuple[str, float]] = tuple(('layer_fraction', b) for b in (*budgets.LAYER_BUDGETS,
                                                                                               1.0))) -> str:
  """Markdown: per group, the accuracy at each (cost, budget) column, interpolated along each run's curve, mean ±
  std over the seeds whose curve reaches that cheap ('-' where none does; [k/n] when only k of n do). Cost
  'time_fraction' columns are written as the matched measured speedup 1 / budget."""
  rows = []
  for key, g in groups(runs, keys).items():
    cells = []
    for cost, b in columns:
      vals = [v for v in (at_budget(r, b, cost) for r in g) if v is not None]
      cells.append(Spread.of(vals).fmt() + ('' if len(vals) == len(g) else f' [{len(vals)}/{len(g)}]')
                   if vals else '-')
    rows.append([*key, len(g), *cells])
  names = {'layer_fraction': 'layers', 'flops_fraction': 'FLOPs'}
  heads = [f'{1 / b:g}x measured' if cost == 'time_fraction' else f'{names[cost]} {budgets.budget_label(b)}'
           for cost, b in columns]
  return markdown_table([*keys, 'seeds', *heads], rows)


def area_table(runs: Sequence[dict[str, Any]], keys: Sequence[str], cost: str = 'layer_fraction') -> str:
  """Markdown: per group, the mean accuracy over the budgets every run of the table covers (the area under
  each run's interpolated curve over that range, divided by its width), mean ± std over seeds."""
  lo, hi = budgets.common_range([curve_points(r, cost) for r in runs], cost)
  rows = [[*key, len(g), Spread.of([budgets.mean_accuracy(curve_points(r, cost), cost, lo, hi) for r in g]).fmt()]
          for key, g in groups(runs, keys).items()]
  return markdown_table([*keys, 'seeds', f'mean accuracy over {cost} {lo:.3f}-{hi:g}'], rows)


def curve_band(g: Sequence[dict[str, Any]], x_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per threshold (the seeds share them): mean x, mean accuracy, std of accuracy (0 for one seed).
  Returns three [thresholds] arrays, sorted by x."""
  pts = [sorted(r['curve']['points'], key=lambda p: p['threshold']) for r in g]
  n = min(len(p) for p in pts)
  x = np.array([[p[i][x_key] for i in range(n)] for p in pts])
  y = np.array([[p[i]['accuracy'] for i in range(n)] for p in pts])
  std = y.std(0, ddof=1) if len(g) > 1 else np.zeros(n)
  order = np.argsort(x.mean(0))
  return x.mean(0)[order], y.mean(0)[order], std[order]


def plot_task(runs: Sequence[dict[str, Any]], title: str, path: str) -> None:
  """Accuracy against the fraction of layers run (left) and the measured speedup (right), one line per
  method (mean over seeds) with a band of ± one std."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for i, ((method,), g) in enumerate(groups(runs, ['method']).items()):
    for ax, key in zip(axes, ('layer_fraction', 'measured_speedup')):
      x, y, s = curve_band(g, key)
      ax.plot(x, y, '-o', ms=3, color=f'C{i}', label=f'{method} ({len(g)} seed{"s" * (len(g) > 1)})')
      ax.fill_between(x, y - s, y + s, color=f'C{i}', alpha=0.2)
  axes[0].set_xlabel('fraction of layers run (mean over seeds)')
  axes[1].set_xlabel('measured speedup (wall-clock, full model = 1)')
  axes[0].set_ylabel('accuracy (band: ± 1 std over seeds)')
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def exit_accuracies(g: Sequence[dict[str, Any]], exit_index: int) -> list[float]:
  return [r['per_exit_accuracy'][exit_index] for r in g]


def eval_examples(*group_runs: Sequence[dict[str, Any]]) -> int:
  """The eval set size the groups were scored on (the binomial part of a claim's error)."""
  sizes = {r['eval_examples'] for g in group_runs for r in g}
  if len(sizes) != 1:
    raise ValueError(f'Runs compared in one claim were scored on different eval sizes: {sorted(sizes)}.')
  return sizes.pop()


def results_sections(runs: Sequence[dict[str, Any]], keys: Sequence[str], study_dir: str,
                     figure_key: str, title: str) -> list[tuple[str, str]]:
  """(heading, markdown) of the per-exit table, the budget table and one figure per value of figure_key
  (written to study_dir/<value>.png)."""
  figures = []
  for (value,), g in groups(runs, [figure_key]).items():
    name = f'{value}.png'.replace('/', '_')
    plot_task(g, f'{title}: {value}', os.path.join(study_dir, name))
    figures.append(f'![{value}]({name})')
  # A panel's runs are compared by eye: read them alike (all dense, or all from their evaluated thresholds).
  alike = [r for g in groups(runs, [figure_key]).values() for r in read_alike(g)[0]]
  at_cost = [('layer_fraction', b) for b in budgets.LAYER_BUDGETS] + [
      ('flops_fraction', b) for b in budgets.LAYER_BUDGETS] + [('time_fraction', 1 / s) for s in budgets.SPEEDUPS]
  return [('Per-exit accuracy (mean ± std over seeds)', per_exit_table(runs, keys)),
          ('Accuracy at matched cost (mean ± std over seeds)',
           'Each run\'s accuracy interpolated along its curve at fixed fractions of the layers and of the FLOPs '
           'run, and at matched measured speedups (experiments/budgets.py: between two thresholds the '
           'accuracy is interpolated linearly in the cost, which routing a share of the examples through each '
           'reaches); not the best grid point within a budget. Layer and FLOPs budgets read the dense sweep of '
           'the stored outputs (101 thresholds) where every run of a panel has them, else every run\'s '
           'evaluated thresholds.\n\n' + budget_table(alike, keys, at_cost)),
          ('Area under the curve', area_table(alike, keys)),
          ('Speed-accuracy curves', '\n\n'.join(figures) + '\n')]

