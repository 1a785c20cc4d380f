"""Exports a trained exit model as a transformers classifier directory:

  python export.py --config configs/sweet_demo.py --workdir runs/sweet_demo --out exported/sweet_demo [--exit 4]

Then transformers.AutoModelForSequenceClassification.from_pretrained('exported/sweet_demo') loads the chosen exit
(the last by default; --exit N: the exit after layer N, as a truncated model of N layers) with nothing missing,
and drivers.exporter.load('exported/sweet_demo') reads every exit back into this library (exits.safetensors,
described by exits.json; see drivers/exporter.py).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from drivers import exporter
from drivers import predictor
from pipeline import reporting

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained workdir (default: runs/<config file name>).')
_OUT = flags.DEFINE_string('out', None, 'Directory to write (created; files in it are replaced).')
_EXIT = flags.DEFINE_integer('exit', None, 'The exit the transformers model holds, by the layer it sits after '
                             '(one of config.model.exit_layers; default the last).')


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  workdir = _WORKDIR.value or reporting.default_workdir(flags.FLAGS['config'].config_filename)
  try:
    written = exporter.export(_CONFIG.value, workdir, _OUT.value, exit_layer=_EXIT.value)
  except (predictor.WorkdirError, FileNotFoundError, ValueError) as e:
    sys.exit(f'export.py: {e}')
  for directory in written:
    print(f'wrote {directory}')


if __name__ == '__main__':
  app.run(main)
