"""The early_exit baseline of configs/sweet_mnli.py (the paper's setup; same hyper-parameters).

Command:   python train.py --config configs/early_exit_mnli.py --workdir runs/early_exit_mnli
Hardware, time, result: as configs/sweet_mnli.py.
"""

from configs import sweet_mnli


def get_config():
  config = sweet_mnli.get_config()
  config.method = 'early_exit'
  return config
