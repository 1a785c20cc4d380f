"""Trains a method: python train.py --config configs/sweet_demo.py --workdir runs/sweet_demo

The config file's get_config() picks the method (config.method) and everything else; any field can be
overridden on the command line, e.g. --config.train.learning_rate=3e-5. A rerun of the same command
resumes from the newest checkpoint in --workdir that restores; a workdir made by another run (other data,
model, constants or train.* settings: pipeline.fingerprint) is refused naming the differing fields, and a
finished one is left as it is. Without --workdir, a command whose overrides change the run works in
runs/<config>-<hash of those overrides>, never in the plain command's runs/<config>. Impossible settings are
refused before any work. With no flags it runs the offline demo.
"""

from __future__ import annotations

import itertools
import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from drivers import methods
from drivers import papa_experiment
from pipeline import data, fingerprint, reporting, sharding, train_loop, validation
from sweet_jax import analysis


def _define_flags():
  """The command-line flags; defined only when run as a program, so that tests can import run()."""
  config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
  flags.DEFINE_enum('distributed', 'auto', ['auto', 'yes', 'no'],
                    "Multi-process job: 'yes' on every host of a TPU pod slice.")
  flags.DEFINE_string('workdir', None, 'Output directory (default: runs/<config file name>, with -<hash> of '
                      'the overridden fields when --config.* overrides change the run).')


def gradient_conflict(config, workdir, built, splits):
  """Per-layer cosine similarity between exits' gradients, at the pretrained start and after training:
  WORKDIR/analysis/{pretrained,trained}/gradient_conflict.{json,png}."""
  if built.method.name == 'multi_model':
    logging.warning('multi_model shares no weights between exits: no gradient conflict to measure.')
    return
  trained = sharding.host_local(train_loop.restore_params(config, workdir, built.method))  # every process
  if not reporting.is_writer():
    return  # process 0 measures on its own devices and writes; the others have nothing to add
  for name, params in (('pretrained', built.method.init(jax.random.key(config.train.seed))), ('trained', trained)):
    batches = data.iterate_batches(splits.train, built.encode_fn, config.train.batch_size, seed=0, epoch=0,
                                   shuffle=True)
    out = os.path.join(workdir, 'analysis', name)
    analysis.analyze_and_write(built.encoder_config, built.exit_config, params,
                               itertools.islice(batches, config.analysis.num_batches), out,
                               constants=built.constants)
    print(f'gradient conflict ({name}) written to {out}')


def run(config, workdir: str) -> dict:
  """The whole training command: checks the config, trains (or resumes) and scores; returns results.json's dict."""
  validation.validate(config)  # before any data or model is loaded
  if config.method == 'papa':
    return papa_experiment.run(config, workdir)
  methods.check_model_fields(config)  # reads only the model's config.json and tokenizer
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  results = train_loop.train_and_evaluate(
      config, workdir, built.method, splits, built.encode_fn,
      extra_results={'exit_layers': list(built.exit_config.exit_layers),
                     'label_names': list(splits.train.label_names),
                     'num_train_examples': len(splits.train)},
      run_fingerprint=fingerprint.of_run(config, splits, built.constants_record))
  if results.get('interrupted'):
    return results
  print('per-exit accuracy on the eval split:', ' '.join(f'{a:.4f}' for a in results['per_exit_accuracy']))
  if config.get('analysis', {}).get('gradient_conflict', False):
    gradient_conflict(config, workdir, built, splits)
  return results


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 brings it back
  sharding.initialize_distributed(flags.FLAGS.distributed)  # before any computation
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or fingerprint.default_workdir(flags.FLAGS['config'].config_filename, config)
  results = run(config, workdir)
  if results.get('interrupted'):
    sys.exit(130)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
