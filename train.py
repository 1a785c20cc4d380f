"""Trains a method: python train.py --config configs/sweet_demo.py --workdir runs/sweet_demo

The config file's get_config() picks the method (config.method) and everything else; any field can be
overridden on the command line, e.g. --config.train.learning_rate=3e-5. A rerun of the same command
resumes from the latest checkpoint in --workdir.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'yes', 'no'],
                                  "Multi-process job: 'yes' on every host of a TPU pod slice.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (default: runs/<config file name>).')


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 brings it back
  from pipeline import reporting, sharding
  sharding.initialize_distributed(_DISTRIBUTED.value)  # before any other jax call
  config = _CONFIG.value
  workdir = _WORKDIR.value or reporting.default_workdir(flags.FLAGS['config'].config_filename)
  logging.info('method %s, workdir %s', config.method, workdir)

  if config.method == 'papa':
    import papa_experiment
    papa_experiment.run(config, workdir)
    return

  import methods
  from pipeline import data, train_loop
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  results = train_loop.train_and_evaluate(
      config, workdir, built.method, splits, built.encode_fn,
      extra_results={'exit_layers': list(built.exit_config.exit_layers),
                     'label_names': list(splits.train.label_names),
                     'num_train_examples': len(splits.train)})
  if results.get('interrupted'):
    sys.exit(130)
  print('per-exit accuracy on the eval split:', ' '.join(f'{a:.4f}' for a in results['per_exit_accuracy']))


if __name__ == '__main__':
  app.run(main)
