"""SWEET study B: the 12-layer all-mpnet-base-v2 with the paper's exits (after layers 1, 4, 6, 12), on
movie reviews. The test of the README's hypothesis: SWEET's last exits are weaker than Early-Exit's on the
6-layer MiniLM because its final segments are only two layers deep; with deeper final segments (6 -> 12),
does SWEET's last exit close the gap?

Command (from the repository root; rerun the same command to continue where it stopped):
  python -m experiments.sweet_study_b                      # sweet and early_exit, seed 42
  python -m experiments.sweet_study_b --multi_model        # also Multi-Model (it trains 1+4+6+12 = 23 layers)
  python -m experiments.sweet_study_b --configs=sweet=PATH,early_exit=PATH   # if the config names differ
  python -m experiments.sweet_study_b --dry_run | --report_only

Grid: methods sweet, early_exit (+ multi_model with --multi_model), configs (default)
configs/sweet_demo_mpnet.py, configs/early_exit_demo_mpnet.py, configs/multi_model_demo_mpnet.py (checkpoint
'mpnet-base'); the configs are data (--configs), so renamed files only need the flag. Seeds: train.seed 42
(--seeds=1 on CPU; up to 3: 42, 43, 44). Overridden on every cell, whatever the configs say: exits
(1, 4, 6, 12), source movie_reviews, 6,000 training examples, data.seed 42, train.seed, the sequence length.
Evaluation settings as study A: 7 confidence thresholds 0.51 ... 1 (exit_study.eval_thresholds),
config.eval.timing_repeats=5 (exit_study.TIMING_REPEATS) on 512 timed examples.
Sequence length: the 99th percentile of the training split's token counts under MPNet's tokenizer, rounded up
to the next padding bucket (token_lengths.choose_seq_length; cached in docs/results/sweet_study_b/seq_lengths.json).
Time per cell on 2 CPU cores, measured: SWEET and Early-Exit train in 31-32 min (2026-12-01, niced unit
tests sharing the cores) to 48 min (2026-12-05, quiet, 3.5 s a step; 34.5 min at 2.5 s on an Intel Xeon the same
day) and evaluate in 6.5-7 min timed once, 22-32 min timed 5 times; Multi-Model (23 layers) about twice the training.
Claims: SWEET's last exit against Early-Exit's on MPNet; and, when study A's movie-review runs are on disk,
whether that gap is smaller than on MiniLM (docs/results/sweet_study_a/runs).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app, flags

from experiments import common, exit_study, paired, report, stats, sweet_study_a, token_lengths
from experiments.stats import claim_sentence, difference

STUDY = 'sweet_study_b'
CHECKPOINT = 'mpnet-base'
EXIT_LAYERS = (1, 4, 6, 12)
TASK = 'movie_reviews'
CONFIGS = {'sweet': 'configs/sweet_demo_mpnet.py', 'early_exit': 'configs/early_exit_demo_mpnet.py'}
MULTI_MODEL_CONFIG = 'configs/multi_model_demo_mpnet.py'


def cells(configs: dict[str, str], seq_length: int, *, seeds: int, work_root: str) -> list[common.Cell]:
  out = []
  for method, config_path in configs.items():
    for seed in sweet_study_a.SEEDS[:seeds]:
      flags_ = common.overrides(
          method=method, model__exit_layers=EXIT_LAYERS, train__seed=seed, data__max_seq_length=seq_length,
          eval__thresholds=exit_study.eval_thresholds(2), eval__timing_repeats=exit_study.TIMING_REPEATS,
          **{f'data__{k}': v for k, v in sweet_study_a.data_fields(TASK).items()})
      labels = {'task': TASK, 'method': method, 'seed': seed, 'panel': f'mpnet_{TASK}'}
      out.append(exit_study.exit_cell(f'{TASK}_{method}_s{seed}', config_path, flags_, labels, work_root))
  return out


def last_exit_gap(ee: Sequence[dict[str, Any]], sw: Sequence[dict[str, Any]]) -> tuple[float, float, int]:
  """Early-Exit's last-exit accuracy minus SWEET's (seed-paired), its standard error and seed count."""
  ee, sw = exit_study.common_seeds(ee, sw)
  if not ee:
    raise ValueError('No seed has both an Early-Exit and a SWEET run.')
  return difference(exit_study.exit_accuracies(ee, -1), exit_study.exit_accuracies(sw, -1),
                    exit_study.eval_examples(ee, sw))


GAP_CLAIM = ('The gap between Early-Exit\'s and SWEET\'s last exits is smaller on the 12-layer MPNet (final segment '
             '6 layers) than on the 6-layer MiniLM (2 layers): MiniLM gap minus MPNet gap, accuracy points')


def gap_claim(minilm: dict[str, list[dict[str, Any]]], mpnet: dict[str, list[dict[str, Any]]]) -> stats.Claim | str:
  """MiniLM's last-exit gap (Early-Exit minus SWEET) minus MPNet's. Both studies score the same movie-review test
  split, so with stored outputs the difference of differences is a paired bootstrap over its examples and the
  seeds all four groups ran (row s of each from seed s); the summary rule on each study's own seeds otherwise."""
  groups = exit_study.common_seeds(minilm['early_exit'], minilm['sweet'], mpnet['early_exit'], mpnet['sweet'])
  kept, note = paired.with_outputs(*groups)
  scored = [paired.correctness(g, paired.exit_correct(-1)) for g in kept]
  if all(s is not None for s in scored):
    if len({sha for _, sha in scored}) != 1:
      raise ValueError('Study A and study B scored different movie-review test sets; their gaps do not pair.')
    (ee_a, _), (sw_a, _), (ee_b, _), (sw_b, _) = scored
    seeds = ', '.join(str(r['labels']['seed']) for r in kept[0])
    return stats.Claim(f'{GAP_CLAIM} (seeds {seeds}, which both studies ran){note}',
                       stats.paired_bootstrap(ee_a - sw_a, ee_b - sw_b))
  gap_b, se_b, n_b = last_exit_gap(mpnet['early_exit'], mpnet['sweet'])
  gap_a, se_a, n_a = last_exit_gap(minilm['early_exit'], minilm['sweet'])
  return claim_sentence(GAP_CLAIM, gap_a - gap_b, (se_a ** 2 + se_b ** 2) ** 0.5, seeds=min(n_a, n_b), scale=100,
                        detail=f'MiniLM gap {100 * gap_a:+.1f} ({n_a} seeds), MPNet gap {100 * gap_b:+.1f} ({n_b})')


def claims(runs: Sequence[dict[str, Any]], study_a_runs: Sequence[dict[str, Any]]) -> list[str]:
  by = {m: [r for r in runs if r['labels']['method'] == m] for m in ('sweet', 'early_exit', 'multi_model')}
  out = sweet_study_a.method_claims(f'MPNet {TASK}', by)
  a = {m: [r for r in study_a_runs if (r['labels']['task'], r['labels']['pooling'], r['labels']['method'])
           == (TASK, 'mean', m)] for m in ('sweet', 'early_exit')}
  if by['sweet'] and by['early_exit'] and a['sweet'] and a['early_exit']:
    out.append(gap_claim(a, by))
  return paired.render(out)


def write_report(study_dir: str, configs: dict[str, str], work_root: str) -> str:
  runs = common.load_runs(study_dir)
  study_a_runs = common.load_runs(os.path.join(common.RESULTS_ROOT, sweet_study_a.STUDY))
  lengths_path = os.path.join(study_dir, 'seq_lengths.json')
  lengths = token_lengths.lengths_line(lengths_path)
  settings = (f'all-mpnet-base-v2 (`{CHECKPOINT}`), exits after layers {EXIT_LAYERS}, {TASK}, '
              f'{sweet_study_a.TRAIN_EXAMPLES} training examples, configs {configs}; evaluation: 7 thresholds, '
              'speedups the median of 5 timed repeats, 1 in the cells committed before issue 24 (see the runner\'s '
              f'docstring).\n\nCommand: `python -m experiments.sweet_study_b` (workdirs under `{work_root}`).\n\n'
              f'Sequence length: {lengths}.\n')
  sections = exit_study.results_sections(runs, ['method'], study_dir, 'panel', 'MPNet-base, exits 1/4/6/12') \
      if runs else []
  return report.write_readme(study_dir, 'SWEET study B: all-mpnet-base-v2 (12 layers), the paper\'s exits',
                             settings, sections, claims(runs, study_a_runs), runs)


def define_flags() -> None:
  common.define_flags(STUDY)
  flags.DEFINE_integer('seeds', 1, 'Seeds (42, 43, 44): 1 on CPU.')
  flags.DEFINE_bool('multi_model', False, 'Also train Multi-Model (23 layers: ~3x a SWEET run).')
  flags.DEFINE_list('configs', [f'{m}={p}' for m, p in CONFIGS.items()],
                    f'method=config path, ... (--multi_model adds multi_model={MULTI_MODEL_CONFIG} unless given)')


def main(argv):
  del argv  # everything comes from flags
  f = flags.FLAGS
  study_dir = os.path.join(common.RESULTS_ROOT, STUDY)
  items = list(f.configs)
  if f.multi_model and not any(i.startswith('multi_model=') for i in items):
    items.append(f'multi_model={MULTI_MODEL_CONFIG}')
  configs = common.parse_configs(items, must_exist=not f.report_only)

  def make_cells():
    seq = token_lengths.choose_seq_length(os.path.join(study_dir, 'seq_lengths.json'), CHECKPOINT,
                                   sweet_study_a.data_fields(TASK))
    return cells(configs, seq, seeds=f.seeds, work_root=f.work_root)
  common.study_main(f, study_dir, make_cells, exit_study.extract,
                    lambda: write_report(study_dir, configs, f.work_root))


if __name__ == '__main__':
  define_flags()
  app.run(main)
