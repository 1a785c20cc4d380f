"""Why SWEET helps: gradient conflict between Early-Exit's exits on the shared layers, on both models, at the
pretrained start and after training.

Command (from the repository root; after, or instead of, the SWEET studies: it reuses their Early-Exit
workdirs, so a trained cell is not trained again):
  python -m experiments.gradient_conflict                  # MiniLM and MPNet-base
  python -m experiments.gradient_conflict --models=minilm  # one model
  python -m experiments.gradient_conflict --dry_run | --report_only

Cells: the movie-review, mean-pooling, seed-42 Early-Exit cell of sweet_study_a (MiniLM, exits 1/2/4/6) and of
sweet_study_b (MPNet-base, exits 1/4/6/12), each rerun through train.py with
--config.analysis.gradient_conflict=True on the study's workdir: train.py resumes at its last step (nothing is
retrained when the study cell finished), then sweet_jax.analysis measures, over 8 training batches
(config.analysis.num_batches), the cosine between every pair of exits' loss gradients on every shared layer,
for the pretrained parameters and the trained ones: WORKDIR/analysis/{pretrained,trained}/gradient_conflict.json.
Time on 2 CPU cores, measured: the training cell's (5.5 min MiniLM, 32 min MPNet) when not yet trained, plus
48 s (MiniLM) / 6 min (MPNet) of analysis.
Outputs: docs/results/gradient_conflict/{README.md, <model>.png, runs/<model>.json} (the per-layer cosines).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app, flags
import numpy as np

from experiments import common, report, sweet_study_a, sweet_study_b, token_lengths
from pipeline.reporting import markdown_table

STUDY = 'gradient_conflict'
STAGES = ('pretrained', 'trained')
KEEP = ('groups', 'mean_cosine', 'cosine', 'exit_layers', 'segment', 'losses', 'batches')


def analysis_cell(model: str, study_cell: common.Cell) -> common.Cell:
  """The study cell's training step with the analysis switched on, on the study cell's workdir."""
  train = next(s for s in study_cell.steps if s.name == 'train')
  step = common.Step('analysis', (*train.argv, '--config.analysis.gradient_conflict=True'),
                     os.path.join('analysis', 'trained', 'gradient_conflict.json'))
  return common.Cell(model, study_cell.workdir, (step,), {'model': model, 'source_cell': study_cell.name})


def extract(cell: common.Cell) -> dict[str, Any]:
  return {stage: {k: v for k, v in common.read_json(os.path.join(cell.workdir, 'analysis', stage,
                                                                 'gradient_conflict.json')).items() if k in KEEP}
          for stage in STAGES}


def shared_mean(report_: dict[str, Any]) -> float:
  """Mean over layer groups of each group's mean pairwise cosine (groups no two exits reach are left out): a
  group shared by few pairs (a late layer) weighs as much as one shared by all."""
  vals = [v for v in report_['mean_cosine'].values() if v is not None]
  return float(np.mean(vals)) if vals else float('nan')


def pairs_mean(report_: dict[str, Any]) -> float:
  """Mean over every (layer group, pair of exits) cosine: each pair on each shared layer weighs the same."""
  vals = [c for g in report_['groups'] for i, row in enumerate(report_['cosine'][g]) for j, c in enumerate(row)
          if j > i and c is not None]
  return float(np.mean(vals)) if vals else float('nan')


def plot(run: dict[str, Any], path: str) -> None:
  """Per layer, the cosine of every pair of exits (thin) and their mean (thick), pretrained against trained."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 4.2))
  for stage, style in zip(STAGES, ('--', '-')):
    r = run[stage]
    groups_ = r['groups']
    x = np.arange(len(groups_))
    n = len(r['exit_layers'])
    for i in range(n):
      for j in range(i + 1, n):
        y = [np.nan if r['cosine'][g][i][j] is None else r['cosine'][g][i][j] for g in groups_]
        ax.plot(x, y, style, color='grey', lw=0.7, alpha=0.6)
    mean = [np.nan if r['mean_cosine'][g] is None else r['mean_cosine'][g] for g in groups_]
    ax.plot(x, mean, style, marker='o', lw=2.2, label=f'{stage}: mean over exit pairs (thin: each pair)')
  ax.set_xticks(x, [g.replace('layers_', 'L').replace('embeddings', 'emb') for g in groups_])
  ax.axhline(0.0, color='black', lw=0.8)
  ax.set_ylim(-1.05, 1.05)
  ax.set_ylabel('cosine between exits\' gradients')
  ax.set_title(f'Early-Exit, {run["labels"]["model"]}: exits after layers {run["trained"]["exit_layers"]}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def most_negative(report_: dict[str, Any]) -> tuple[float, str, int, int] | None:
  """The most negative cosine between two exits' gradients on any shared layer group: (cosine, group, exit
  layer a, exit layer b), or None when no group has a pair. A mean over pairs can hide a conflict between
  two camps of exits (early against late), which this shows."""
  layers = report_['exit_layers']
  pairs = [(c, g, layers[i], layers[j]) for g in report_['groups'] for i, row in enumerate(report_['cosine'][g])
           for j, c in enumerate(row) if j > i and c is not None]
  return min(pairs) if pairs else None


def table(runs: Sequence[dict[str, Any]]) -> str:
  rows = []
  for r in runs:
    for g in r['trained']['groups']:
      vals = [r[s]['mean_cosine'][g] for s in STAGES]
      rows.append([r['labels']['model'], g, *('-' if v is None else f'{v:+.3f}' for v in vals)])
  return markdown_table(['model', 'layer group', 'mean cosine, pretrained', 'mean cosine, trained'], rows)


def _pair(found: tuple[float, str, int, int] | None) -> str:
  return 'none' if found is None else f'{found[0]:+.3f} (exits after layers {found[2]} and {found[3]}, {found[1]})'


def sentences(runs: Sequence[dict[str, Any]]) -> list[str]:
  """A single measurement per model and stage (8 batches, one seed): numbers, no verdict."""
  out = []
  for r in runs:
    neg = {s: sum(1 for v in r[s]['mean_cosine'].values() if v is not None and v < 0) for s in STAGES}
    out.append(f'- {r["labels"]["model"]}: exits\' gradients on the shared layers have mean cosine (over every '
               f'layer group and pair of exits) {pairs_mean(r["pretrained"]):+.3f} at the pretrained start and '
               f'{pairs_mean(r["trained"]):+.3f} after Early-Exit training (mean over layer groups of each group\'s '
               f'pair mean: {shared_mean(r["pretrained"]):+.3f} and {shared_mean(r["trained"]):+.3f}); layer groups with a negative mean (conflict): {neg["pretrained"]} and '
               f'{neg["trained"]} of {len(r["trained"]["groups"])}; most negative pair: '
               + '; '.join(f'{s} {_pair(most_negative(r[s]))}' for s in STAGES)
               + f' (single measurement over {r["trained"]["batches"]} batches: no spread, so no verdict).')
  return out


def write_report(study_dir: str, work_roots: dict[str, str]) -> str:
  runs = common.load_runs(study_dir)
  for r in runs:
    plot(r, os.path.join(study_dir, f'{r["cell"]}.png'))
  settings = ('Early-Exit, movie reviews, mean pooling, seed 42; 8 training batches per measurement. '
              f'Command: `python -m experiments.gradient_conflict` (workdirs shared with the SWEET studies: '
              f'{work_roots}).\n')
  sections = [('Per-layer mean cosine', table(runs)),
              ('Figures', '\n\n'.join(f'![{r["cell"]}]({r["cell"]}.png)' for r in runs) + '\n')] if runs else []
  return report.write_readme(study_dir, 'Gradient conflict between Early-Exit\'s exits', settings, sections,
                             sentences(runs), runs)


def cells(models: Sequence[str], work_roots: dict[str, str], mpnet_config: str) -> list[common.Cell]:
  """The Early-Exit seed-42 movie-review cells of the two SWEET studies, with the analysis switched on."""
  out = []
  root = common.RESULTS_ROOT
  if 'minilm' in models:
    seq = token_lengths.choose_seq_length(os.path.join(root, sweet_study_a.STUDY, 'seq_lengths.json'),
                                   sweet_study_a.CHECKPOINT, sweet_study_a.data_fields('movie_reviews'))
    grid = sweet_study_a.cells(sweet_study_a.CONFIGS, {'movie_reviews': seq, 'tweets': seq}, movie_seeds=1,
                               tweet_seeds=0, work_root=work_roots['minilm'])
    out.append(analysis_cell('minilm', next(c for c in grid if c.name == 'movie_reviews_mean_early_exit_s42')))
  if 'mpnet' in models:
    seq = token_lengths.choose_seq_length(os.path.join(root, sweet_study_b.STUDY, 'seq_lengths.json'),
                                   sweet_study_b.CHECKPOINT, sweet_study_a.data_fields(sweet_study_b.TASK))
    grid = sweet_study_b.cells({'early_exit': mpnet_config}, seq, seeds=1,
                               work_root=work_roots['mpnet'])
    out.append(analysis_cell('mpnet', grid[0]))
  return out


def define_flags() -> None:
  common.define_flags(STUDY, work_root=False)
  flags.DEFINE_list('models', ['minilm', 'mpnet'], 'Models to analyse.')
  flags.DEFINE_string('mpnet_config', sweet_study_b.CONFIGS['early_exit'], 'The MPNet Early-Exit config.')


def main(argv):
  del argv  # everything comes from flags
  f = flags.FLAGS
  study_dir = os.path.join(common.RESULTS_ROOT, STUDY)
  # The SWEET studies' workdirs: the analysis reuses their trained Early-Exit cells.
  work_roots = {'minilm': os.path.join('runs', 'studies', sweet_study_a.STUDY),
                'mpnet': os.path.join('runs', 'studies', sweet_study_b.STUDY)}
  common.study_main(f, study_dir, lambda: cells(f.models, work_roots, f.mpnet_config), extract,
                    lambda: write_report(study_dir, work_roots))


if __name__ == '__main__':
  define_flags()
  app.run(main)
