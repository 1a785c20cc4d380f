"""The early_exit baseline of configs/sweet_demo_mpnet.py (same model, data, exits and hyper-parameters).

Command:   python train.py --config configs/early_exit_demo_mpnet.py --workdir runs/early_exit_demo_mpnet
Hardware, time: as configs/sweet_demo_mpnet.py (measured there for SWEET; see its docstring).
"""

from configs import sweet_demo_mpnet


def get_config():
  config = sweet_demo_mpnet.get_config()
  config.method = 'early_exit'
  return config
