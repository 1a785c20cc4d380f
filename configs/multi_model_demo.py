"""The multi_model baseline of configs/sweet_demo.py (same model, data and hyper-parameters).

Command:   python train.py --config configs/multi_model_demo.py --workdir runs/multi_model_demo
Hardware, time, result: as configs/sweet_demo.py (see README's table).
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.method = 'multi_model'
  return config
