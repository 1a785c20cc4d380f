"""Exports a trained exit model as Hugging Face model directories:

  python export.py --config configs/sweet_demo.py --workdir runs/sweet_demo --out exported/sweet_demo

Then transformers.AutoModel.from_pretrained('exported/sweet_demo') loads the fine-tuned encoder in torch, and
encoder_jax.load_pretrained('exported/sweet_demo') loads it back here; the exit heads are in
exit_heads.safetensors, described by exit_heads.json (see drivers/exporter.py). Multi-Model: one directory per member.
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


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  workdir = _WORKDIR.value or reporting.default_workdir(flags.FLAGS['config'].config_filename)
  try:
    written = exporter.export(_CONFIG.value, workdir, _OUT.value)
  except (predictor.WorkdirError, FileNotFoundError, ValueError) as e:
    sys.exit(f'export.py: {e}')
  for directory in written:
    print(f'wrote {directory}')


if __name__ == '__main__':
  app.run(main)
