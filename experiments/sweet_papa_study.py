"""SWEET x PAPA (issue 25): does constant attention in the first segment move the fast end of the
speed-accuracy frontier? MiniLM, exits after layers 1, 2, 4, 6; SWEET and Early-Exit, each with four head
variants, compared at matched FLOPs and at matched measured speedup.

Command (from the repository root; rerun the same command to continue where it stopped):
  python -m experiments.sweet_papa_study                  # run missing cells, then write the report
  python -m experiments.sweet_papa_study --dry_run        # the commands of the cells still to do, with estimates
  python -m experiments.sweet_papa_study --cells='movie_reviews_*' | --report_only | --redo=eval --cells=...

Grid (59 cells): per task one PAPA cell, then train + eval cells.
  PAPA cell   `python train.py --config configs/papa_demo.py` on the task (train.seed 42, papa.ks (0,)): the
              attention averages of the pretrained MiniLM over (a seeded 3,000 of) the task's TRAINING split,
              and PAPA's lambda-gated head ranking, also on the training split. The eval split is carved from
              the same source with the same data.seed and eval_size as the exit cells', so the averages never
              see a test example.
  exit cells  methods sweet, early_exit (configs/sweet_papa_demo.py with config.method) x variants
                none       no constant heads
                first_all  every head of the first segment (layer 1) constant
                rank_q     the first heads of PAPA's ranking among the first segment's, k chosen so the first
                rank_h     exit's FLOPs fall by a quarter (rank_q) and a half (rank_h) of what first_all saves
              x seeds: movie_reviews and tweets 42, 43, 44; bbc_news 42.
  Why 'of what first_all saves': at L = 64 the first segment all constant saves 17.5% of the first exit's
  FLOPs (18.4% at 128, 22.9% at 512: the report's attention-share table), so a quarter and a half of the
  first exit's FLOPs cannot be reached within the first segment; with exits 1/2/4/6, k = 3 and 6 of its 12
  heads, the ones PAPA's ranking makes constant first.
Layout: every cell of a task, 'none' included (model.layout_length), reads PAPA's fixed layout at one length
L (papa_study's rule: the 99th percentile of the training split's token counts rounded up to a padding bucket,
at most 128 for BBC News), so all variants see the same tokens and the same test set (the report checks the
predictions' test-set hash). A single text gets the first L/2 - 1 word pieces (papa_study's docstring: at
L = 64 this cuts 27% of the movie-review sentences and 49% of the tweets; BBC articles are read to their first
63 word pieces). The rest is sweet_study_a's: 6,000 training examples, 2 epochs, 7 confidence thresholds,
speedups the median of 5 timed repeats.
Time per cell on 2 quiet CPU cores, measured at L = 64 (2026-12-03): PAPA cell 5.5 min; exit cell ~14.5 min
(train 8.4, eval 6.0: PAPA's fixed layout pads every sentence to 64 tokens, where sweet_study_a's length buckets
averaged about half that). BBC News at L = 128, measured 2026-12-04: PAPA 6.9 min, exit cell 13-14.5 min (its
training split is 1,602 articles, not 6,000; eval 8-10 min of it). The grid: ~14 h;
--dry_run prints the estimate per cell.
Report: docs/results/sweet_papa_study/README.md: per task the accuracy at fixed FLOPs fractions and at matched
measured speedups (experiments/budgets.py), paired tests of each variant against 'none' of the same method
(experiments/paired.py, on the stored per-example outputs), a figure with the variants overlaid, and the share
of a layer's FLOPs that constant heads skip at each length.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app, flags

from experiments import budgets, common, exit_study, paired, report, stats, sweet_study_a, token_lengths
from pipeline.reporting import markdown_table

STUDY = 'sweet_papa_study'
CHECKPOINT = 'minilm'
TASKS = {'movie_reviews': 2, 'tweets': 3, 'bbc_news': 5}  # task -> number of classes
TASK_SEEDS = {'movie_reviews': (42, 43, 44), 'tweets': (42, 43, 44), 'bbc_news': (42,)}
TASK_MAX_LENGTH = {'bbc_news': 128}  # papa_study's time budget on long texts
METHODS = ('sweet', 'early_exit')
VARIANTS = ('none', 'first_all', 'rank_q', 'rank_h')
RANK_TARGETS = {'rank_q': 0.25, 'rank_h': 0.5}  # share of first_all's first-exit FLOPs saving
EXIT_LAYERS = sweet_study_a.EXIT_LAYERS
CONFIG, PAPA_CONFIG = 'configs/sweet_papa_demo.py', 'configs/papa_demo.py'
PAPA_SEED = 42
EVAL_SIZE = 0.2  # the share carved out for evaluation, the same in the PAPA and the exit cells
PAPA_DATA = {'max_train_samples': 3000, 'calibration_size': 0, 'seed': 42, 'eval_size': EVAL_SIZE}
ATTENTION_LENGTHS = (64, 128, 256, 512)
ESTIMATE_MIN = {('papa', 64): 5.5, ('papa', 128): 7, ('exit', 64): 14.5, ('exit', 128): 14}  # see the docstring


def exit_data(task: str) -> dict[str, Any]:
  """The exit cells' data fields: sweet_study_a's, with the eval carve stated."""
  return sweet_study_a.data_fields(task) | {'eval_size': EVAL_SIZE}


def papa_cell(task: str, length: int, work_root: str) -> common.Cell:
  """Averages and ranking of one task, on its training split (papa.ks (0,): one cheap probe, no timing)."""
  name = f'{task}_papa'
  workdir = os.path.join(work_root, name)
  argv = ('train.py', '--config', PAPA_CONFIG, '--workdir', workdir, *common.overrides(
      model__checkpoint=CHECKPOINT, train__seed=PAPA_SEED, papa__ks=(0,), papa__length=length,
      papa__measure_speed=False, data__max_seq_length=length, data__source=task,
      **{f'data__{k}': v for k, v in PAPA_DATA.items()}))
  return common.Cell(name, os.path.join(common.ROOT, workdir),
                     (common.Step('papa', argv, os.path.join('papa', 'results.json')),),
                     {'kind': 'papa', 'task': task, 'length': length, 'seed': PAPA_SEED})


def averages_path(task: str, work_root: str) -> str:
  """The PAPA cell's averages, as the exit cells name them (they run from the repository root)."""
  return os.path.join(work_root, f'{task}_papa', 'papa', 'averages.npz')


def ranking_path(task: str, work_root: str) -> str:
  return os.path.join(common.ROOT, work_root, f'{task}_papa', 'papa', 'ranking.json')


def minilm_config():
  from encoder_jax.config import EncoderConfig
  from encoder_jax.hf_import import resolve
  return EncoderConfig.from_json_file(resolve(CHECKPOINT) / 'config.json')


def first_exit_flops(encoder_config, heads, length: int) -> float:
  """FLOPs of an example leaving at the first exit with `heads` constant (sweet_jax.curves)."""
  from sweet_jax import curves, exits
  ecfg = exits.ExitConfig(EXIT_LAYERS, 2, 'mean')
  return float(curves.exit_costs(encoder_config.with_heads('constant', heads), ecfg, 'sweet', length)[0])


def ranked_heads(ranking: Sequence[Sequence[int]], encoder_config, target: float, length: int
                 ) -> list[tuple[int, int]]:
  """PAPA's ranking restricted to the first segment's heads (layers below the first exit), cut at the
  fewest heads whose first-exit FLOPs saving reaches `target` of the whole first segment's."""
  pool = [(int(l), int(h)) for l, h in ranking if l < EXIT_LAYERS[0]]
  base = first_exit_flops(encoder_config, [], length)
  most = base - first_exit_flops(encoder_config, pool, length)
  for k in range(len(pool) + 1):
    if base - first_exit_flops(encoder_config, pool[:k], length) >= target * most * (1 - 1e-9):
      return pool[:k]
  return pool


def variant_heads(variant: str, ranking, encoder_config, length: int):
  """model.constant_heads of a variant: '' | 'first_segment' | ((layer, head), ...); None while the
  ranking it needs does not exist yet."""
  if variant == 'none':
    return ''
  if variant == 'first_all':
    return 'first_segment'
  if ranking is None:
    return None
  return tuple(ranked_heads(ranking, encoder_config, RANK_TARGETS[variant], length))


def exit_cell(task: str, method: str, variant: str, seed: int, length: int, heads, work_root: str
              ) -> common.Cell:
  """train.py + eval.py of one (task, method, variant, seed); heads None: waiting for the PAPA ranking."""
  constants = {} if variant == 'none' else {'model__constants_path': averages_path(task, work_root)}
  flags_ = common.overrides(
      method=method, model__exit_layers=EXIT_LAYERS, train__seed=seed, data__max_seq_length=length,
      model__layout_length=length, model__constant_heads='<waiting>' if heads is None else heads,
      eval__thresholds=exit_study.eval_thresholds(TASKS[task]), eval__timing_repeats=exit_study.TIMING_REPEATS,
      **constants, **{f'data__{k}': v for k, v in exit_data(task).items()})
  labels = {'kind': 'exit', 'task': task, 'method': method, 'variant': variant, 'seed': seed, 'length': length,
            'constant_heads': heads if isinstance(heads, str) or heads is None else [list(h) for h in heads],
            'waiting': heads is None}
  return exit_study.exit_cell(f'{task}_{method}_{variant}_s{seed}', CONFIG, flags_, labels, work_root)


def cells(lengths: dict[str, int], rankings: dict[str, Any], encoder_config, work_root: str
          ) -> list[common.Cell]:
  """The grid of the module docstring, per task its PAPA cell first; seed-major within a task, so a study
  stopped part-way has every variant at the seeds it finished. rankings: task -> PAPA ranking or None."""
  out = []
  for task in TASKS:
    out.append(papa_cell(task, lengths[task], work_root))
    for seed in TASK_SEEDS[task]:
      for method in METHODS:
        for variant in VARIANTS:
          heads = variant_heads(variant, rankings.get(task), encoder_config, lengths[task])
          out.append(exit_cell(task, method, variant, seed, lengths[task], heads, work_root))
  return out


def extract(cell: common.Cell) -> dict[str, Any]:
  """Exit cells: exit_study.extract (curve, per-exit accuracy, predictions attached). PAPA cells: the length,
  the averages' identity and size, and the ranking."""
  if cell.labels['kind'] == 'exit':
    return exit_study.extract(cell)
  from pipeline import fingerprint
  res = common.read_json(os.path.join(cell.workdir, 'papa', 'results.json'))
  rank = common.read_json(os.path.join(cell.workdir, 'papa', 'ranking.json'))
  return {'length': res['length'], 'estimate_examples': res['estimate_examples'], 'num_train': res['data']['num_train'],
          'averages': fingerprint.file_identity(os.path.join(cell.workdir, 'papa', 'averages.npz')),
          'ranking': rank['ranking'], 'lambdas': rank['lambdas']}


# ------------------------------------------------------------------------------------------------- report

NAMES = {'sweet': 'SWEET', 'early_exit': 'Early-Exit'}
FLOPS_BUDGETS = (0.25, 1 / 3, 0.5)  # where the fast end is: the paired claims' budgets


def attention_share_table(encoder_config, lengths: Sequence[int] = ATTENTION_LENGTHS) -> str:
  """Markdown: per sequence length, the share of a MiniLM layer's FLOPs that constant heads skip (query and
  key projections, scores, softmax, less the renormaliser they add), and the first exit's FLOPs saving of
  each variant (with PAPA's ranking, the rank variants' savings are k/12 of first_all's whichever heads)."""
  from sweet_jax import curves
  n = encoder_config.num_heads
  rows = []
  for length in lengths:
    layer = curves.layer_flops(encoder_config, 0, length)
    constant = curves.layer_flops(encoder_config.with_heads('constant', [(0, h) for h in range(n)]), 0, length)
    base = first_exit_flops(encoder_config, [], length)
    order = [(0, h) for h in range(n)]  # any order: every head of a layer costs the same
    saving = lambda heads: f'{100 * (1 - first_exit_flops(encoder_config, heads, length) / base):.1f}%'
    rows.append([length, f'{100 * (1 - constant / layer):.1f}%', saving(order),
                 *(saving(ranked_heads(order, encoder_config, RANK_TARGETS[v], length)) for v in ('rank_q', 'rank_h'))])
  return markdown_table(['L', 'layer FLOPs constant heads skip', 'first exit saving: first_all', 'rank_q',
                         'rank_h'], rows)


def test_set_check(runs: Sequence[dict[str, Any]]) -> str:
  """One line per task: whether every exit cell of it was scored on one test set (the predictions' hash)."""
  lines = []
  for task in TASKS:
    hashes = {r.get('hashes', {}).get('test_set_sha256') for r in runs if r['labels']['task'] == task}
    if hashes:
      ok = len(hashes) == 1 and None not in hashes
      lines.append(f'- {task}: ' + ('every cell scored on one test set (sha256 '
                                    f'{next(iter(hashes))[:12]})' if ok else f'**test sets differ**: {sorted(map(str, hashes))}'))
  return '\n'.join(lines) + '\n'


def fast_end(none_runs: Sequence[dict[str, Any]]) -> float:
  """The FLOPs fraction of 'none''s first exit, where the fast end of the frontier starts: the cheapest point
  of its curve (the dense sweep's threshold 0 sends every example out there; the same for every seed). A
  variant reaches it with its cheaper first exit and spends the difference on later exits. Where every curve
  has flattened by a quarter of the FLOPs (BBC News), this is the one budget that can tell variants apart."""
  return budgets.common_range([exit_study.curve_points(r, 'flops_fraction') for r in none_runs], 'flops_fraction')[0]


def claims(runs: Sequence[dict[str, Any]]) -> list[str]:
  """Per task and method, each variant against 'none' (runs paired by seed): the first exit's accuracy, and
  accuracy at none's first-exit FLOPs (fast_end) and at FLOPS_BUDGETS of the FLOPs (the dense offline sweep)
  and at matched measured speedups (each run's timed curve); paired on the stored outputs, else from the runs'
  numbers."""
  out: list[str | stats.Claim] = []
  for task in TASKS:
    for method in METHODS:
      by = {v: [r for r in runs if r['labels']['task'] == task and r['labels']['method'] == method
                and r['labels']['variant'] == v] for v in VARIANTS}
      for variant in VARIANTS[1:]:
        a, b = exit_study.common_seeds(by[variant], by['none'])
        if not a:
          continue
        # What the constant heads cost where they are: the first exit's own accuracy (every fast example's).
        out.append(sweet_study_a.compare(f'{task}, {NAMES[method]}: none\'s first exit is more accurate than '
                                         f'{variant}\'s (accuracy points)', b, a, paired.exit_correct(0),
                                         lambda r: r['per_exit_accuracy'][0]))
        what = f'{task}, {NAMES[method]}: {variant} is more accurate than none'
        fast = fast_end(b)
        for budget in (fast, *FLOPS_BUDGETS):
          label = f'{budgets.budget_label(budget)} of the FLOPs' + (' (none\'s first exit)' if budget == fast else '')
          if None in [exit_study.at_budget(r, budget, 'flops_fraction') for r in a + b]:
            out.append(f'- {what} at {label}: not judged (a curve does not reach down to it).')
            continue
          out.append(sweet_study_a.compare(f'{what} at {label} (interpolated, accuracy points)', a, b,
                                           paired.at_budget(budget, 'flops_fraction'),
                                           lambda r, x=budget: exit_study.at_budget(r, x, 'flops_fraction')))
        for speedup in budgets.SPEEDUPS:
          if None in [exit_study.at_budget(r, 1 / speedup, 'time_fraction') for r in a + b]:
            out.append(f'- {what} at a measured {speedup:g}x speedup: not judged (a curve is not that fast).')
            continue
          out.append(sweet_study_a.compare(f'{what} at a matched measured {speedup:g}x speedup (timed curve, '
                                           'interpolated, accuracy points)', a, b, paired.at_speedup(speedup),
                                           lambda r, x=speedup: exit_study.at_budget(r, 1 / x, 'time_fraction')))
  return paired.render(out)


def plot_variants(runs: Sequence[dict[str, Any]], title: str, path: str) -> None:
  """Accuracy against the FLOPs fraction (left) and the measured speedup (right): one line per (method,
  variant), mean over seeds with a ± 1 std band; colour by variant, line style by method."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
  for (method, variant), g in exit_study.groups(runs, ['method', 'variant']).items():
    style = dict(color=f'C{VARIANTS.index(variant)}', ls='-' if method == 'sweet' else '--')
    for ax, key in zip(axes, ('flops_fraction', 'measured_speedup')):
      x, y, s = exit_study.curve_band(g, key)
      ax.plot(x, y, marker='o', ms=3, label=f'{NAMES[method]} {variant} ({len(g)})', **style)
      ax.fill_between(x, y - s, y + s, color=style['color'], alpha=0.12)
  axes[0].set_xlabel('fraction of the full model\'s FLOPs')
  axes[1].set_xlabel('measured speedup (wall-clock, full model = 1)')
  axes[0].set_ylabel('accuracy (band: ± 1 std over seeds)')
  for ax in axes:
    ax.grid(alpha=0.3)
  # A long handle, so that Early-Exit's dashes show either side of the marker.
  axes[1].legend(fontsize=7, ncol=2, handlelength=4)
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def sections(runs: Sequence[dict[str, Any]], study_dir: str, encoder_config) -> list[tuple[str, str]]:
  """Per task: the per-exit table, the table at matched FLOPs (from none's first exit's, fast_end) and
  speedups, and its figure; then the test-set check and the attention share."""
  keys = ['method', 'variant']
  out = []
  for task in TASKS:
    g = [r for r in runs if r['labels']['task'] == task]
    if not g:
      continue
    none = [r for r in g if r['labels']['variant'] == 'none']
    columns = ([('flops_fraction', b) for b in ([fast_end(none)] if none else []) + list(budgets.LAYER_BUDGETS)]
               + [('time_fraction', 1 / s) for s in budgets.SPEEDUPS])
    plot_variants(g, f'MiniLM, exits 1/2/4/6, {task} (L = {g[0]["labels"]["length"]})',
                  os.path.join(study_dir, f'{task}.png'))
    out.append((f'{task} (L = {g[0]["labels"]["length"]})',
                '### Per-exit accuracy (mean ± std over seeds)\n\n' + exit_study.per_exit_table(g, keys)
                + '\n### Accuracy at matched FLOPs and at matched measured speedup\n\n'
                + exit_study.budget_table(g, keys, columns) + f'\n![{task}]({task}.png)\n'))
  out.append(('Test sets', test_set_check(runs)))
  out.append(('FLOPs share of attention at each length (MiniLM, sweet_jax.curves)', attention_share_table(encoder_config)))
  return out


def settings(lengths_path: str, work_root: str) -> str:
  return (f'MiniLM (`{CHECKPOINT}`), exits after layers {EXIT_LAYERS}; methods {list(METHODS)}; variants '
          f'{list(VARIANTS)} (rank targets {RANK_TARGETS} of first_all\'s first-exit FLOPs saving); seeds '
          f'{TASK_SEEDS}; constants and rankings from one PAPA cell per task on its training split. See the '
          'runner\'s docstring.\n\nCommand: `python -m experiments.sweet_papa_study` (workdirs under '
          f'`{work_root}`; each cell\'s commands are in its raw JSON).\n\nLayout lengths: '
          f'{token_lengths.lengths_line(lengths_path)}.\n')


def write_report(study_dir: str, work_root: str) -> str:
  runs = common.load_runs(study_dir)
  exit_runs = [r for r in runs if r['labels']['kind'] == 'exit']
  body = sections(exit_runs, study_dir, minilm_config()) if exit_runs else []
  return report.write_readme(study_dir, 'SWEET x PAPA: constant attention in the first segment',
                             settings(os.path.join(study_dir, 'seq_lengths.json'), work_root), body,
                             claims(exit_runs), runs)


# --------------------------------------------------------------------------------------------------- main

def define_flags() -> None:
  common.define_flags(STUDY)


def estimate_line(cell: common.Cell) -> str:
  minutes = ESTIMATE_MIN.get((cell.labels['kind'], cell.labels['length']))
  wait = ' (constant heads from its PAPA cell\'s ranking, once that cell is done)' if cell.labels.get('waiting') else ''
  return f'  {cell.name}: ~{minutes if minutes else "?"} min{wait}'


def main(argv):
  del argv  # everything comes from flags
  f = flags.FLAGS
  study_dir = os.path.join(common.RESULTS_ROOT, STUDY)
  lengths_path = os.path.join(study_dir, 'seq_lengths.json')
  encoder_config = minilm_config()

  def make_cells():
    lengths = {t: token_lengths.choose_seq_length(lengths_path, CHECKPOINT, PAPA_DATA | {'source': t},
                                                  max_length=TASK_MAX_LENGTH.get(t, 0)) for t in TASKS}
    rankings = {t: common.read_json(ranking_path(t, f.work_root))['ranking']
                for t in TASKS if os.path.exists(ranking_path(t, f.work_root))}
    return common.select_cells(cells(lengths, rankings, encoder_config, f.work_root), f.cells)

  if not f.report_only:
    chosen = make_cells()
    if f.dry_run:
      print('Estimated minutes per cell (2 quiet CPU cores):\n' + '\n'.join(map(estimate_line, chosen)))
      print(common.run_cells(chosen, study_dir, extract, dry_run=True).summary())
      return
    # Rank cells wait for their task's PAPA ranking: run the others (PAPA cells first in the grid), then the
    # waiting ones with the heads the new rankings give.
    ready = [c for c in chosen if not c.labels.get('waiting')]
    print(common.run_cells(ready, study_dir, extract, redo=f.redo).summary(), flush=True)
    waiting = {c.name for c in chosen if c.labels.get('waiting')}
    if waiting:
      later = [c for c in make_cells() if c.name in waiting and not c.labels.get('waiting')]
      print(common.run_cells(later, study_dir, extract, redo=f.redo).summary(), flush=True)
  print(write_report(study_dir, f.work_root))


if __name__ == '__main__':
  define_flags()
  app.run(main)
