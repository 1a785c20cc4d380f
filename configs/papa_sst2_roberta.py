"""PAPA on SST-2 with roberta-base (12 x 768, 144 heads): configs/papa_sst2.py with another encoder.

Command:   python train.py --config configs/papa_sst2_roberta.py --workdir runs/papa_sst2_roberta
Hardware, time: as configs/papa_sst2.py (hub access and an accelerator; not measured here).
Result:    not reproduced here. The PAPA paper reports an average relative drop of ~8% over six tasks when
           every head is constant, little or none with half of them, and that better models lose more:
           RoBERTa and DeBERTa drop more than BERT (and large models more than base ones).
"""

from configs import papa_sst2


def get_config():
  config = papa_sst2.get_config()
  config.model.checkpoint = 'roberta-base'  # hub id, or a local directory
  return config
