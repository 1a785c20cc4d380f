"""SWEET study A: the packaged 6-layer MiniLM, exits after layers 1, 2, 4, 6; SWEET against Early-Exit and
Multi-Model on two tasks, with spread over seeds.

Command (from the repository root; rerun the same command to continue where it stopped):
  python -m experiments.sweet_study_a                     # run missing cells, then write the report
  python -m experiments.sweet_study_a --tweet_seeds=3     # the committed grid (21 cells, ~3.7 h on 2 CPU cores)
  python -m experiments.sweet_study_a --dry_run           # print the commands of the cells still to do
  python -m experiments.sweet_study_a --report_only       # tables, figures, README from the runs on disk

Grid (15 cells with the default --tweet_seeds=1, 21 with 3):
  tasks     movie_reviews (binary, 2,114 held-out sentences) and tweets (3 classes, data source 'tweets';
            a seeded 2,000 of its ~7,600 carved-out eval tweets, to keep evaluation time comparable)
  methods   sweet, early_exit, multi_model (configs/sweet_demo.py, early_exit_demo.py, multi_model_demo.py,
            or --configs=method=path,...)
  seeds     train.seed 42, 43, 44 on movie reviews (--movie_seeds=3); --tweet_seeds on tweets (default 1 on
            CPU). The seed drives initialisation, dropout and batch order; data.seed stays 42, so every run
            trains on the same 6,000 examples and is scored on the same eval set (spread = training noise).
  pooling   'mean' (the demo's; MiniLM was trained with it) everywhere, plus 'cls' (the papers') on movie
            reviews with the first seed.
  fixed     6,000 training examples, 2 epochs of batch 16, lr 5e-5, exits (1, 2, 4, 6), the demo's other
            hyper-parameters.
Evaluation settings (cheaper than the demo's 11 thresholds x 3 timing repeats): 7 confidence thresholds
from just above chance to 1 (exit_study.eval_thresholds: 0.51 ... 1 binary, 0.34 ... 1 three classes),
config.eval.timing_repeats=5 (exit_study.TIMING_REPEATS; the cells committed before issue 24 were timed
once, with repeats 1, and SWEET's and Multi-Model's [CLS] cells still are) on the default 512 timed examples.
Sequence length per task: the 99th percentile of the training split's token counts (MiniLM's tokenizer,
special tokens included), rounded up to the tokenizer's next padding bucket (32, 64, 128, ...); cached with
the percentiles in docs/results/sweet_study_a/seq_lengths.json (token_lengths.choose_seq_length).
Measured per cell on 2 CPU cores (AMD EPYC, nothing else running; 2026-12-01): SWEET and Early-Exit training
5.3-5.5 min, Multi-Model 12 min, eval 1.3-2 min with these settings; so the whole CPU grid ~2 h. A tweets seed
(measured on seeds 43 and 44, 2026-12-04/05): SWEET and Early-Exit 12.6-14.2 min, Multi-Model 23.6-24 min, train +
eval; so ~3.7 h with --tweet_seeds=3. Another job on the same cores doubles these.
Claims judged per task on mean pooling (compare: paired over examples and seeds on the stored outputs, under Holm's
rule with the report's other paired claims; for runs without outputs, stats.verdict at 2 standard errors): SWEET's
first exit beats Early-Exit's; Early-Exit's last exit beats SWEET's; averaged over the exits, SWEET's and
Multi-Model's classifiers beat Early-Exit's (the abstract's +1.1 and +2.3); at 0.25, 1/3 and 0.5 of the layers (each
curve interpolated at the budget, experiments.budgets) and on average over the budgets both curves cover (area under
the curve), SWEET beats Early-Exit and Multi-Model, and Early-Exit beats Multi-Model; and on movie reviews,
Early-Exit's first exit learns more with mean than with [CLS] pooling (one seed).
Outputs: docs/results/sweet_study_a/{README.md, *.png, runs/<cell>.json, seq_lengths.json, failures.json};
workdirs (checkpoints, logs) under runs/studies/sweet_study_a/ (not committed).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import app, flags
import numpy as np

from experiments import budgets, common, exit_study, paired, report, stats, token_lengths
from experiments.stats import claim_sentence, difference

STUDY = 'sweet_study_a'
TASKS = {'movie_reviews': 2, 'tweets': 3}  # task -> number of classes
SEEDS = (42, 43, 44)
EXIT_LAYERS = (1, 2, 4, 6)
TRAIN_EXAMPLES = 6000
TWEET_EVAL_EXAMPLES = 2000
CHECKPOINT = 'minilm'
CONFIGS = {'sweet': 'configs/sweet_demo.py', 'early_exit': 'configs/early_exit_demo.py',
           'multi_model': 'configs/multi_model_demo.py'}

def data_fields(task: str) -> dict[str, Any]:
  """The data config of a task (what the runs train on and what the sequence length is chosen from)."""
  fields = {'source': task, 'max_train_samples': TRAIN_EXAMPLES, 'seed': 42}
  if task == 'tweets':
    fields['max_eval_samples'] = TWEET_EVAL_EXAMPLES
  return fields


def cells(configs: dict[str, str], seq_lengths: dict[str, int], *, movie_seeds: int, tweet_seeds: int,
          work_root: str) -> list[common.Cell]:
  """The grid of the module docstring; seq_lengths: task -> max_seq_length."""
  out = []
  for task, num_labels in TASKS.items():
    seeds = SEEDS[:movie_seeds if task == 'movie_reviews' else tweet_seeds]
    for pooling in ('mean', 'cls') if task == 'movie_reviews' else ('mean',):
      # Seed-major: a study stopped part-way has every method at the seeds it finished, so its comparisons
      # stay paired.
      for seed in (seeds if pooling == 'mean' else seeds[:1]):
        for method, config_path in configs.items():
          flags_ = common.overrides(
              method=method, model__exit_layers=EXIT_LAYERS, model__pooling=pooling, train__seed=seed,
              data__max_seq_length=seq_lengths[task], eval__thresholds=exit_study.eval_thresholds(num_labels),
              eval__timing_repeats=exit_study.TIMING_REPEATS, **{f'data__{k}': v for k, v in data_fields(task).items()})
          labels = {'task': task, 'pooling': pooling, 'method': method, 'seed': seed,
                    'panel': f'{task}_{pooling}'}
          out.append(exit_study.exit_cell(f'{task}_{pooling}_{method}_s{seed}', config_path, flags_, labels,
                                          work_root))
  return out


def claims(runs: Sequence[dict[str, Any]]) -> list[str]:
  """The papers' claims, judged per task on mean pooling (and the pooling claim on movie reviews)."""
  out = []
  for task in TASKS:
    by = {m: [r for r in runs if r['labels']['task'] == task and r['labels']['pooling'] == 'mean'
              and r['labels']['method'] == m] for m in CONFIGS}
    out += method_claims(task, by)
  ee = {p: [r for r in runs if r['labels']['task'] == 'movie_reviews' and r['labels']['pooling'] == p
            and r['labels']['method'] == 'early_exit'] for p in ('mean', 'cls')}
  out += pooling_claim(ee['mean'], ee['cls'])
  return paired.render(out)


def pooling_claim(mean: Sequence[dict[str, Any]], cls: Sequence[dict[str, Any]]) -> list[str | stats.Claim]:
  """Movie reviews: Early-Exit's first exit learns more with mean pooling than with [CLS] pooling, on the seeds
  both poolings ran (the [CLS] cells have one); [] when none."""
  mean, cls = exit_study.common_seeds(mean, cls)
  if not mean:
    return []
  return [compare('movie_reviews: Early-Exit\'s first exit learns more with mean pooling than with [CLS] pooling '
                  '(accuracy points, mean minus cls)', mean, cls, paired.exit_correct(0),
                  lambda r: r['per_exit_accuracy'][0])]


def compare(text: str, a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], per_example: paired.PerExample,
            summary: Callable[[dict[str, Any]], float]) -> str | stats.Claim:
  """'a is more accurate than b' (runs paired by seed): a paired claim on the stored per-example outputs when
  every run has them (judged later, with the report's other claims, by paired.render), else a sentence judged
  from each run's summary number (stats.difference: seeds plus both binomial errors), every run read alike
  (exit_study.read_alike)."""
  c = paired.claim(text, a, b, per_example)
  if c is not None:
    return c
  va, vb = ([summary(r) for r in g] for g in exit_study.read_alike(a, b))
  if None in va + vb:
    return f'- {text}: not judged (a run\'s evaluated curve does not reach this budget).'
  est, se, n = difference(va, vb, exit_study.eval_examples(a, b))
  return claim_sentence(text, est, se, seeds=n, scale=100)


def method_claims(task: str, by: dict[str, list[dict[str, Any]]],
                  budgets_: Sequence[float] = (0.25, 1 / 3, 0.5)) -> list[str | stats.Claim]:
  """SWEET's first exit beats Early-Exit's; Early-Exit's last exit beats SWEET's; averaged over exits, SWEET
  and Multi-Model beat Early-Exit; and the budget claims. by: method -> its runs (one task, one pooling)."""
  out = []
  if by.get('sweet') and by.get('early_exit'):
    sw, ee = exit_study.common_seeds(by['sweet'], by['early_exit'])
    if sw:
      for name, e, a, b in (('SWEET\'s first exit is more accurate than Early-Exit\'s', 0, sw, ee),
                            ('Early-Exit\'s last exit is more accurate than SWEET\'s', -1, ee, sw)):
        out.append(compare(f'{task}: {name} (accuracy points)', a, b, paired.exit_correct(e),
                           lambda r, e=e: r['per_exit_accuracy'][e]))
  # The paper's abstract: averaged over the exits, SWEET's classifiers beat Early-Exit's by 1.1 points and
  # Multi-Model's by 2.3 (BERT-base and DeBERTa on MNLI and others).
  for method, name, paper in (('sweet', 'SWEET', 1.1), ('multi_model', 'Multi-Model', 2.3)):
    a, b = exit_study.common_seeds(by.get(method, []), by.get('early_exit', []))
    if a:  # some seed has both
      out.append(compare(f'{task}: {name}\'s exits are more accurate than Early-Exit\'s on average over the exits '
                         f'(accuracy points; paper: +{paper})', a, b, paired.mean_over_exits,
                         lambda r: float(np.mean(r['per_exit_accuracy']))))
  return out + budget_claims(task, by, budgets_)


NAMES = {'sweet': 'SWEET', 'early_exit': 'Early-Exit', 'multi_model': 'Multi-Model'}


def budget_claims(task: str, by: dict[str, list[dict[str, Any]]], budgets_: Sequence[float]
                  ) -> list[str | stats.Claim]:
  """At each layer budget (each run's accuracy interpolated along its curve, experiments.budgets) and over the
  range of budgets both curves cover (mean accuracy, the area under the curve): SWEET beats Early-Exit and
  Multi-Model (the paper: SWEET is best at fast speeds), and Early-Exit beats Multi-Model (the paper:
  Multi-Model's cascade overhead outweighs its better classifiers)."""
  out = []
  for first, second in (('sweet', 'early_exit'), ('sweet', 'multi_model'), ('early_exit', 'multi_model')):
    if not (by.get(first) and by.get(second)):
      continue
    fs, ss = exit_study.common_seeds(by[first], by[second])
    if not fs:
      continue
    for b in budgets_:
      label = budgets.budget_label(b)
      if None in [exit_study.at_budget(r, b) for r in fs + ss]:
        out.append(f'- {task}: {NAMES[first]} against {NAMES[second]} at {label} of the layers: not judged (a run\'s '
                   'curve does not reach down to this budget).')
        continue
      out.append(compare(f'{task}: {NAMES[first]} is more accurate than {NAMES[second]} at {label} of the layers '
                         '(interpolated along each curve, accuracy points)', fs, ss, paired.at_budget(b),
                         lambda r, b=b: exit_study.at_budget(r, b)))
    # The range every curve covers, read as the comparison reads them (dense sweeps only when all have outputs).
    lo, hi = budgets.common_range([exit_study.curve_points(r) for g in exit_study.read_alike(fs, ss) for r in g],
                                  'layer_fraction')
    out.append(compare(f'{task}: {NAMES[first]}\'s curve lies above {NAMES[second]}\'s on average over '
                       f'{lo:.2f}-{hi:g} of the layers (area under the curve, accuracy points)', fs, ss,
                       paired.over_range(lo, hi),
                       lambda r: budgets.mean_accuracy(exit_study.curve_points(r), 'layer_fraction', lo, hi)))
  return out


def settings(configs: dict[str, str], work_root: str, seq_lengths_path: str) -> str:
  return (f'MiniLM (`{CHECKPOINT}`), exits after layers {EXIT_LAYERS}, {TRAIN_EXAMPLES} training examples, '
          f'seeds {SEEDS} (train.seed), configs {configs}; see the runner\'s docstring for the grid and the '
          'evaluation settings (7 thresholds; speedups the median of 5 timed repeats, 1 in the cells committed before '
          'issue 24).\n\n'
          f'Command: `python -m experiments.sweet_study_a` (workdirs under `{work_root}`; each cell\'s exact '
          'commands are in its raw JSON).\n\nSequence lengths (99th percentile of the training split\'s token '
          f'counts, rounded up to a padding bucket): {token_lengths.lengths_line(seq_lengths_path)}.\n')


def write_report(study_dir: str, configs: dict[str, str], work_root: str) -> str:
  runs = common.load_runs(study_dir)
  sections = exit_study.results_sections(runs, ['task', 'pooling', 'method'], study_dir, 'panel',
                                         'MiniLM, exits 1/2/4/6') if runs else []
  return report.write_readme(study_dir, 'SWEET study A: MiniLM (6 layers), two tasks',
                             settings(configs, work_root, os.path.join(study_dir, 'seq_lengths.json')),
                             sections, claims(runs), runs)


def define_flags() -> None:
  common.define_flags(STUDY)
  flags.DEFINE_integer('movie_seeds', 3, 'Seeds on movie reviews (42, 43, ...).')
  flags.DEFINE_integer('tweet_seeds', 1, 'Seeds on tweets: 3 where an accelerator is available.')
  flags.DEFINE_list('configs', [f'{m}={p}' for m, p in CONFIGS.items()], 'method=config path, ...')


def main(argv):
  del argv  # everything comes from flags
  f = flags.FLAGS
  study_dir = os.path.join(common.RESULTS_ROOT, STUDY)
  configs = common.parse_configs(f.configs, must_exist=not f.report_only)
  lengths_path = os.path.join(study_dir, 'seq_lengths.json')

  def make_cells():
    seq = {t: token_lengths.choose_seq_length(lengths_path, CHECKPOINT, data_fields(t)) for t in TASKS}
    return cells(configs, seq, movie_seeds=f.movie_seeds, tweet_seeds=f.tweet_seeds, work_root=f.work_root)
  common.study_main(f, study_dir, make_cells, exit_study.extract,
                    lambda: write_report(study_dir, configs, f.work_root))


if __name__ == '__main__':
  define_flags()
  app.run(main)
