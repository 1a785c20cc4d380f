"""Evaluates a trained workdir: python eval.py --config configs/sweet_demo.py --workdir runs/sweet_demo

Writes WORKDIR/eval/: per-exit accuracy, temperatures fit on the held-out calibration split, the
speed-accuracy curve (curve.json, curve.csv, curve.png) with measured adaptive-inference speedups.
--compare DIR1,DIR2,... overlays the curves of several evaluated workdirs in one plot.
For config.method == 'papa' it re-scores the saved probes.

The config must describe the data the workdir was trained on (its recorded fingerprint): another data seed,
other split sizes or other training files could put training examples into the calibration or eval split, and
are refused naming the fields, as is any other model, constants or train.* setting than the run's; only the
eval file, data.max_eval_samples and train.dtype may change. Only the parameters are restored; a damaged
newest checkpoint falls back to the newest one that restores, with a warning. Every output in WORKDIR/eval/
records the checkpoint step it scored, that checkpoint's run identity and the code that scored it.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from drivers import methods
from drivers import papa_experiment
from drivers import sweet_eval
from pipeline import data, fingerprint, reporting, sharding, train_loop, validation


def _define_flags():
  """The command-line flags; defined only when run as a program, so that tests can import run()."""
  config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
  flags.DEFINE_enum('distributed', 'auto', ['auto', 'yes', 'no'],
                    "Multi-process job: 'yes' on every host of a TPU pod slice.")
  flags.DEFINE_string('workdir', None, 'The training workdir (default: as train.py derives it from the command).')
  flags.DEFINE_list('compare', [], 'Evaluated workdirs whose curves to overlay (no evaluation runs).')
  flags.DEFINE_string('out', 'runs/compare.png', 'Where --compare writes its plot.')


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO; --verbosity=0 brings it back
  sharding.initialize_distributed(flags.FLAGS.distributed)  # before any computation
  if flags.FLAGS.compare:
    sweet_eval.compare(flags.FLAGS.compare, flags.FLAGS.out)
    print(f'wrote {flags.FLAGS.out}')
    return
  config = flags.FLAGS.config
  run(config, flags.FLAGS.workdir or fingerprint.default_workdir(flags.FLAGS['config'].config_filename, config))


def run(config, workdir: str) -> dict:
  """The whole evaluation command (see the module docstring); returns what sweet_eval.evaluate returns."""
  validation.validate(config)
  if config.method == 'papa':
    return papa_experiment.rescore(config, workdir)
  methods.check_model_fields(config)
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  now = fingerprint.of_run(config, splits, built.constants_record)

  def check(meta):
    if 'fingerprint' not in meta:
      logging.warning('%s records no data fingerprint (made by an older version): make sure this config has '
                      'the data, seed and sizes it was trained with.', workdir)
    fingerprint.check_for_eval(meta.get('fingerprint'), now, workdir)

  restored = train_loop.restore(config, workdir, built.method, check)  # the parameters alone
  result = sweet_eval.evaluate(config, workdir, method=config.method, encoder_config=built.encoder_config,
                               exit_config=built.exit_config, params=restored.state, splits=splits,
                               encode_fn=built.encode_fn, constants=built.constants,
                               record=train_loop.scored_record(restored))
  if reporting.is_writer():
    print(summary(workdir, restored.step, result))
  return result


def summary(workdir: str, step: int, result: dict) -> str:
  """A few lines: per-exit accuracy, temperatures and where the curve is, from sweet_eval.evaluate's result."""
  fmt = lambda xs, spec: ' '.join(format(x, spec) for x in xs)
  out = os.path.join(workdir, 'eval')
  return (f'eval of {workdir} (checkpoint step {step}):\n'
          f'  per-exit accuracy  {fmt(result["per_exit_accuracy"], ".4f")}\n'
          f'  temperatures       {fmt(result["temperatures"], ".3f")}\n'
          f'  curve ({len(result["points"])} thresholds) {os.path.join(out, "curve.png")} '
          f'(also curve.json, curve.csv in {out})')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
