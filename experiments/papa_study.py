"""PAPA study: how much accuracy a frozen encoder's probe loses as its attention heads become constant, on
MiniLM (6 x 12 = 72 heads) and MPNet-base (12 x 12 = 144 heads), on movie reviews, tweets and BBC News
topics, with spread.

Command (from the repository root; rerun the same command to continue where it stopped; inside a cell
papa_experiment also skips the stages it finished: averages, ranking, each probe):
  python -m experiments.papa_study                       # both models, all tasks, 3 seeds
  python -m experiments.papa_study --models=minilm       # one model
  python -m experiments.papa_study --cells='minilm_bbc_news_*'   # some cells (shell patterns, in order)
  python -m experiments.papa_study --dry_run | --report_only

Grid (18 cells): models minilm ('minilm') and mpnet ('mpnet-base'); tasks movie_reviews, tweets, bbc_news;
seeds train.seed 42, 43, 44 (probe initialisation, dropout, batch order, the averages' and ranking run's subsets;
data.seed stays 42: one eval set). Each cell is one `python train.py --config configs/papa_demo.py` run with
config.papa.ks = k constant heads for the fractions 0, 1/8, 1/4, 1/2, 3/4, 1 of all heads (MiniLM
0, 9, 18, 36, 54, 72; MPNet 0, 18, 36, 72, 108, 144), chosen by the cell's own ranking run (lowest lambda
first). Everything else is papa_demo's: 3,000 training and 1,000 eval examples (BBC News has 1,780 and 445:
its 2,225 articles, 20% carved out for eval), 15 probe epochs, a 120-step ranking run. Layout length
(config.papa.length): the 99th percentile of the training split's token counts under the model's tokenizer,
rounded up to the next padding bucket (token_lengths.choose_seq_length), at most TASK_MAX_LENGTH. PAPA's layout
gives a single text the first half of the slots (L/2 - 1 word pieces after [CLS]), which this rule, made for
whole-length inputs, does not count: at L = 64 it cuts 27% of the movie-review sentences and 49% of the
tweets (8.7% and 15.9% of their word pieces, under either tokenizer), as the reference's L = 64 would.
BBC News articles run to 418 tokens at the median and 1,161 at the 99th percentile; they get L = 128, so
each is read to its first 63 word pieces (the title and ~50 words; every article is longer). L = 512 would
make every encoder pass over 4x longer.
Time per cell on 2 CPU cores, measured for MiniLM (2026-12-01): 4.6-5.4 min on quiet cores, 7-8 min with the
test suite sharing them (the probes train on cached features, so the encoder passes dominate). MPNet-base,
measured (2026-12-02, cell mpnet_tweets_s42, quiet cores): averages 1.7 min, ranking run 4.7 min, then per k
2.7 min of encoder pass and 1.2-1.4 min of probe training: ~30 min a cell. BBC News cells (length 128):
MiniLM 9.7 min (quiet, seed 43), MPNet-base 53 min (seed 42). The whole grid ~7 h.
Claims (thresholds stated in each sentence): every head constant costs a small relative drop (< 10%; the
paper averages ~8% over tasks for BERT-base); half the heads constant cost little or none (< 2%); the better
model (higher k = 0 accuracy) loses more with every head constant.
Outputs: docs/results/papa_study/{README.md, accuracy_vs_constant.png, constants_<model>_<task>.png (the
head-averaged constant matrix of every layer, seed 42; its neighbourhood in numbers, constants_summary, in the
seed-42 raw JSON), runs/<cell>.json, runs/<cell>.predictions.npz}.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app, flags
import numpy as np

from experiments import common, exit_study, paired, report, stats, token_lengths
from experiments.stats import Spread, claim_sentence, difference
from pipeline.reporting import markdown_table

STUDY = 'papa_study'
MODELS = {'minilm': 'minilm', 'mpnet': 'mpnet-base'}  # name -> checkpoint
TASKS = ('movie_reviews', 'tweets', 'bbc_news')
TASK_MAX_LENGTH = {'bbc_news': 128}  # time budget on long texts; see the docstring
SEEDS = (42, 43, 44)
FRACTIONS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
CONFIG = 'configs/papa_demo.py'
SMALL_DROP, LITTLE_DROP = 0.10, 0.02
DATA_FIELDS = {'max_train_samples': 3000, 'calibration_size': 0, 'seed': 42}  # papa_demo's: for the lengths


def ks_for(total_heads: int, fractions: Sequence[float] = FRACTIONS) -> tuple[int, ...]:
  """The number of constant heads for each fraction of total_heads (rounded to the nearest head)."""
  return tuple(int(round(f * total_heads)) for f in fractions)


def total_heads(checkpoint: str) -> int:
  from encoder_jax.config import EncoderConfig
  from encoder_jax.hf_import import resolve
  c = EncoderConfig.from_json_file(resolve(checkpoint) / 'config.json')
  return c.num_layers * c.num_heads


def cells(models: dict[str, str], heads: dict[str, int], lengths: dict[tuple[str, str], int], *,
          seeds: int, work_root: str) -> list[common.Cell]:
  """heads: model name -> its total heads; lengths: (model name, task) -> layout length."""
  out = []
  for model, checkpoint in models.items():
    for task in TASKS:
      length = lengths[model, task]
      for seed in SEEDS[:seeds]:
        name = f'{model}_{task}_s{seed}'
        workdir = os.path.join(work_root, name)
        argv = ('train.py', '--config', CONFIG, '--workdir', workdir, *common.overrides(
            model__checkpoint=checkpoint, data__source=task, train__seed=seed, papa__ks=ks_for(heads[model]),
            papa__length=length, data__max_seq_length=length))
        out.append(common.Cell(name, os.path.join(common.ROOT, workdir),
                               (common.Step('papa', argv, os.path.join('papa', 'results.json')),),
                               {'model': model, 'task': task, 'seed': seed}))
  return out


def extract(cell: common.Cell) -> dict[str, Any]:
  """From WORKDIR/papa/results.json the accuracy and relative drop per k; for the first seed, also the
  per-layer picture of the constant matrices (docs/results/papa_study/constants_<model>_<task>.png)."""
  res = common.read_json(os.path.join(cell.workdir, 'papa', 'results.json'))
  if cell.labels['seed'] == SEEDS[0]:
    from papa_jax import averages
    model, task = cell.labels['model'], cell.labels['task']
    consts = averages.load_constants(os.path.join(cell.workdir, 'papa', 'averages.npz'))
    plot_constants(consts, f'{model}, {task} (seed {SEEDS[0]})',
                   os.path.join(common.RESULTS_ROOT, STUDY, f'constants_{model}_{task}.png'))
    summary = {'constants_summary': constants_summary(consts)}  # the numbers the discussion quotes
  else:
    summary = {}
  out = {'model': res['model'], 'length': res['length'], 'num_heads': res['num_heads'],
         'eval_examples': res['data']['num_eval'], 'num_train': res['data']['num_train'],
         'baseline_accuracy': res['baseline_accuracy'], 'fingerprint': res.get('fingerprint'),
         'results': [{k: r[k] for k in ('k', 'num_constant_heads', 'fraction_constant', 'accuracy', 'relative_drop')}
                     for r in res['results']]}
  return summary | out | exit_study.predictions_attachment(os.path.join(cell.workdir, 'papa', 'predictions.npz'))


def constants_summary(averages, slots: int = 19) -> dict[str, Any]:
  """The neighbourhood of PAPA's constant matrices, averaged over heads, for query slots 1..slots (at most
  L - 2): per layer the mean weight on the previous slot, on the slot itself, on the next slot and on the
  first token (slot 0), and the range of the first token's weight over those rows.

  averages: [layers, heads, L, L] (query rows, key columns)."""
  a = np.asarray(averages, np.float64).mean(1)  # [layers, L, L]
  slots = min(slots, a.shape[-1] - 2)
  q = np.arange(1, slots + 1)
  per_layer = [{'layer': l + 1, 'previous': float(a[l, q, q - 1].mean()), 'self': float(a[l, q, q].mean()),
                'next': float(a[l, q, q + 1].mean()), 'first_token': float(a[l, q, 0].mean()),
                'first_token_rows': [float(a[l, q, 0].min()), float(a[l, q, 0].max())]} for l in range(len(a))]
  return {'query_slots': [1, slots], 'per_layer': per_layer}


def plot_constants(constants: np.ndarray, title: str, path: str) -> None:
  """One panel per layer: the constant matrix averaged over heads, [L, L] (query rows, key columns)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  layers = constants.shape[0]
  cols = min(layers, 6)
  rows = -(-layers // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
  per_layer = constants.mean(1)
  vmax = float(np.percentile(per_layer, 99.5)) or 1.0
  for l, ax in enumerate(axes.flat):
    ax.axis('off')
    if l < layers:
      ax.imshow(per_layer[l], vmin=0, vmax=vmax, cmap='viridis')
      ax.set_title(f'layer {l + 1}', fontsize=9)
  fig.suptitle(f'Constant attention (mean over heads), {title}', fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def per_fraction(runs: Sequence[dict[str, Any]], field: str) -> dict[float, list[float]]:
  """fraction of heads constant -> the runs' values of field (seed order)."""
  out: dict[float, list[float]] = {}
  for r in runs:
    for row in r['results']:
      out.setdefault(round(row['fraction_constant'], 3), []).append(row[field])
  return out


def table(runs: Sequence[dict[str, Any]]) -> str:
  rows = []
  for (model, task), g in exit_study.groups(runs, ['model', 'task']).items():
    acc, drop = per_fraction(g, 'accuracy'), per_fraction(g, 'relative_drop')
    for f in sorted(acc):
      rows.append([model, task, f'{f:.3f}', len(acc[f]), Spread.of(acc[f]).fmt(),
                   '(baseline)' if f == 0 else Spread.of(drop[f]).fmt(digits=1, scale=100) + ' %'])
  return markdown_table(['model', 'task', 'fraction constant', 'seeds', 'accuracy', 'relative drop'], rows)


def relative_drop(g: Sequence[dict[str, Any]], fraction: float) -> tuple[float, float, int] | None:
  """Mean relative drop at `fraction` (from the mean k = 0 accuracy), its standard error (seeds and eval-set
  sampling, stats.difference, over the baseline) and seeds; None when a run lacks that fraction."""
  acc = per_fraction(g, 'accuracy')
  if fraction not in acc or 0.0 not in acc or len(acc[fraction]) != len(g):
    return None
  est, se, n = difference(acc[0.0], acc[fraction], g[0]['eval_examples'])
  base = float(np.mean(acc[0.0]))
  return est / base, se / base, n


def _drop_per_example(fraction: float, base: float) -> paired.PerExample:
  """Per example: (right with no head constant - right at `fraction` constant) / base, whose mean over the
  examples is the relative drop from the accuracy `base` (the variants are the ks of FRACTIONS, in order)."""
  def fn(p, run):
    if len(p.variants) != len(FRACTIONS):
      raise ValueError(f'Stored PAPA outputs have {len(p.variants)} probes; the study has {len(FRACTIONS)}.')
    c = p.correct().astype(np.float64)
    return (c[0] - c[FRACTIONS.index(fraction)]) / base
  return fn


def _baseline(g: Sequence[dict[str, Any]]) -> float:
  """The runs' mean accuracy with no head constant (k = 0): what relative drops are relative to."""
  return float(np.mean(per_fraction(g, 'accuracy')[0.0]))


def _paired_drop(g: Sequence[dict[str, Any]], fraction: float) -> tuple[stats.Paired, str] | None:
  """The relative drop at `fraction` (from the paired seeds' mean k = 0 accuracy), bootstrapped paired over
  examples and the seeds with stored outputs, and paired.with_outputs' note; None when no seed has them."""
  (g,), note = paired.with_outputs(g)
  if not g:
    return None
  drop = paired.correctness(g, _drop_per_example(fraction, _baseline(g)))
  return stats.paired_bootstrap(drop[0], np.zeros_like(drop[0])), note


def claims(runs: Sequence[dict[str, Any]]) -> list[str]:
  """Every head constant: a relative drop below SMALL_DROP; half the heads: below LITTLE_DROP (both one-sided
  margins: non-inferiority when tested paired); the better model loses more. Paired on stored outputs where
  some seed has them (judged together under Holm's rule), else from the accuracies."""
  out, all_drops = [], {}
  for (model, task), g in exit_study.groups(runs, ['model', 'task']).items():
    for fraction, bound, what in ((1.0, SMALL_DROP, 'every head constant: a small relative drop'),
                                  (0.5, LITTLE_DROP, 'half the heads constant: little or no relative drop')):
      d = relative_drop(g, fraction)
      if d is None:
        continue
      base = _baseline(g)
      if fraction == 1.0:
        all_drops[model, task] = (*d, base, g)
      text = lambda how: f'{model}, {task}: {what} (< {100 * bound:g}%; {how}, in %)'
      result = _paired_drop(g, fraction)
      if result is not None:
        out.append(stats.Claim(text('the drop') + result[1], result[0], 'within', upper=bound, unit='%'))
        continue
      out.append(claim_sentence(text('minus the drop'), -d[0], d[1], threshold=-bound,
                                seeds=d[2], scale=100, unit='%'))
  for task in TASKS:
    got = {m: all_drops[m, task] for m in MODELS if (m, task) in all_drops}
    if len(got) < 2:
      continue
    (better, b), (worse, w) = sorted(got.items(), key=lambda kv: -kv[1][3])
    out.append(_better_loses_more(task, better, b, worse, w))
  return paired.render(out)


def _better_loses_more(task: str, better: str, b: tuple, worse: str, w: tuple) -> str | stats.Claim:
  """The better model's relative drop with every head constant minus the worse one's: paired over the same
  test examples and the seeds both have with stored outputs, else from the summaries. b, w: relative_drop's
  (drop, se, seeds) with the mean k = 0 accuracy and the runs."""
  text = (f'{task}: the better model ({better}, k = 0 accuracy {b[3]:.3f} against {worse}\'s {w[3]:.3f}) loses '
          'more with every head constant (difference of relative drops, in %)')
  (gb, gw), note = paired.with_outputs(*exit_study.common_seeds(b[4], w[4]))
  if not gb:
    return claim_sentence(text, b[0] - w[0], float(np.hypot(b[1], w[1])), seeds=min(b[2], w[2]), scale=100,
                          unit='%')
  db = paired.correctness(gb, _drop_per_example(1.0, _baseline(gb)))
  dw = paired.correctness(gw, _drop_per_example(1.0, _baseline(gw)))
  if db[1] != dw[1]:
    raise ValueError(f'{task}: the two models were scored on different test sets.')
  return stats.Claim(text + note, stats.paired_bootstrap(db[0], dw[0]), unit='%')


def plot_curves(runs: Sequence[dict[str, Any]], path: str) -> None:
  """Accuracy against the fraction of heads constant, one line per (model, task), band ± 1 std."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for i, ((model, task), g) in enumerate(exit_study.groups(runs, ['model', 'task']).items()):
    acc = per_fraction(g, 'accuracy')
    x = np.array(sorted(acc))
    s = [Spread.of(acc[f]) for f in x]
    y, sd = np.array([v.mean for v in s]), np.array([v.std or 0.0 for v in s])
    ax.plot(x, y, '-o', ms=3, color=f'C{i}', label=f'{model}, {task} ({len(g)} seeds)')
    ax.fill_between(x, y - sd, y + sd, color=f'C{i}', alpha=0.2)
  ax.set_xlabel('fraction of attention heads constant')
  ax.set_ylabel('probe accuracy (band: ± 1 std over seeds)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(study_dir: str, work_root: str) -> str:
  runs = common.load_runs(study_dir)
  lengths_path = os.path.join(study_dir, 'seq_lengths.json')
  lengths = token_lengths.lengths_line(lengths_path)
  sections = []
  if runs:
    plot_curves(runs, os.path.join(study_dir, 'accuracy_vs_constant.png'))
    pictures = sorted(n for n in os.listdir(study_dir) if n.startswith('constants_') and n.endswith('.png'))
    sections = [('Accuracy and relative drop per fraction of constant heads', table(runs)),
                ('Figures', '![accuracy](accuracy_vs_constant.png)\n\n' + '\n\n'.join(
                    f'![{n[:-4]}]({n})' for n in pictures) + '\n')]
  settings = (f'Frozen-encoder probes, `{CONFIG}` with k constant heads for fractions {FRACTIONS}, seeds '
              f'{SEEDS} (see the runner\'s docstring).\n\nCommand: `python -m experiments.papa_study` '
              f'(workdirs under `{work_root}`).\n\nLayout lengths: {lengths}. A single text fills the first '
              'half of the layout (L/2 - 1 word pieces after [CLS]): at L = 64 that cuts 27% of the movie-review '
              'sentences and 49% of the tweets; at L = 128 every BBC News article (to the title and ~50 words).\n')
  return report.write_readme(study_dir, 'PAPA study: constant attention on MiniLM and MPNet-base', settings,
                             sections, claims(runs), runs)


def define_flags() -> None:
  common.define_flags(STUDY)
  flags.DEFINE_list('models', list(MODELS), 'Models (minilm, mpnet).')
  flags.DEFINE_integer('seeds', 3, 'Seeds (42, 43, 44).')


def main(argv):
  del argv  # everything comes from flags
  f = flags.FLAGS
  study_dir = os.path.join(common.RESULTS_ROOT, STUDY)
  models = {m: MODELS[m] for m in f.models}

  def make_cells():
    lengths = {(m, t): token_lengths.choose_seq_length(os.path.join(study_dir, 'seq_lengths.json'), c,
                                                DATA_FIELDS | {'source': t}, max_length=TASK_MAX_LENGTH.get(t, 0))
               for m, c in models.items() for t in TASKS}
    return cells(models, {m: total_heads(c) for m, c in models.items()}, lengths, seeds=f.seeds,
                 work_root=f.work_root)
  common.study_main(f, study_dir, make_cells, extract, lambda: write_report(study_dir, f.work_root))


if __name__ == '__main__':
  define_flags()
  app.run(main)
