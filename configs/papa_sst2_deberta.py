"""PAPA on SST-2 with microsoft/deberta-base (DeBERTa v1, 144 heads; the model the PAPA reference code patches).

Command:   python train.py --config configs/papa_sst2_deberta.py --workdir runs/papa_sst2_deberta
Hardware, time, result: as configs/papa_sst2_roberta.py (the paper finds DeBERTa, like RoBERTa, loses
more than BERT when its heads are made constant).
"""

from configs import papa_sst2


def get_config():
  config = papa_sst2.get_config()
  config.model.checkpoint = 'microsoft/deberta-base'  # hub id, or a local directory
  return config
