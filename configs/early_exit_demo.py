"""The early_exit baseline of configs/sweet_demo.py (same model, data and hyper-parameters).

Command:   python train.py --config configs/early_exit_demo.py --workdir runs/early_exit_demo
Hardware, time, result: as configs/sweet_demo.py (see README's table).
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.method = 'early_exit'
  return config
