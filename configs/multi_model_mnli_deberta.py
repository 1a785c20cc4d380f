"""The multi_model baseline of configs/sweet_mnli_deberta.py (the paper's DeBERTa setup; same hyper-parameters).

Command:   python train.py --config configs/multi_model_mnli_deberta.py --workdir runs/multi_model_mnli_deberta
Hardware, time, result: as configs/sweet_mnli_deberta.py.
"""

from configs import sweet_mnli_deberta


def get_config():
  config = sweet_mnli_deberta.get_config()
  config.method = 'multi_model'
  return config
