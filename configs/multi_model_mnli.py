"""The multi_model baseline of configs/sweet_mnli.py (the paper's setup; same hyper-parameters).

Command:   python train.py --config configs/multi_model_mnli.py --workdir runs/multi_model_mnli
Hardware, time, result: as configs/sweet_mnli.py.
"""

from configs import sweet_mnli


def get_config():
  config = sweet_mnli.get_config()
  config.method = 'multi_model'
  return config
