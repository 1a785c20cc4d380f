"""Evaluates a trained workdir: python eval.py --config configs/sweet_demo.py --workdir runs/sweet_demo

Writes WORKDIR/eval/: per-exit accuracy, temperatures fit on the held-out calibration split, the
speed-accuracy curve (curve.json, curve.csv, curve.png) with measured adaptive-inference speedups.
--compare DIR1,DIR2,... overlays the curves of several evaluated workdirs in one plot.
For config.method == 'papa' it re-scores the saved probes.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

import methods
import papa_experiment
import sweet_eval
from pipeline import data, reporting, sharding, train_loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'yes', 'no'],
                                 "Multi-process job: 'yes' on every host of a TPU pod slice.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'The training workdir (default: runs/<config file name>).')
_COMPARE = flags.DEFINE_list('compare', [], 'Evaluated workdirs whose curves to overlay (no evaluation runs).')
_OUT = flags.DEFINE_string('out', 'runs/compare.png', 'Where --compare writes its plot.')


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO; --verbosity=0 brings it back
  sharding.initialize_distributed(_DISTRIBUTED.value)  # before any computation
  if _COMPARE.value:
    sweet_eval.compare(_COMPARE.value, _OUT.value)
    print(f'wrote {_OUT.value}')
    return
  config = _CONFIG.value
  workdir = _WORKDIR.value or reporting.default_workdir(flags.FLAGS['config'].config_filename)
  if config.method == 'papa':
    papa_experiment.rescore(config, workdir)
    return
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  params = train_loop.restore_params(config, workdir, built.method)
  sweet_eval.evaluate(config, workdir, method=config.method, encoder_config=built.encoder_config,
                      exit_config=built.exit_config, params=params, splits=splits, encode_fn=built.encode_fn,
                      constants=built.constants)


if __name__ == '__main__':
  app.run(main)
