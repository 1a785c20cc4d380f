"""SWEET, the paper's DeBERTa setup: microsoft/deberta-base (DeBERTa v1, 12 x 768) on MNLI, 6,000 examples.

Command:   python train.py --config configs/sweet_mnli_deberta.py --workdir runs/sweet_mnli_deberta
           python eval.py  --config configs/sweet_mnli_deberta.py --workdir runs/sweet_mnli_deberta
Baselines: configs/early_exit_mnli_deberta.py, configs/multi_model_mnli_deberta.py.
Hardware:  an accelerator with Hugging Face hub access (weights, glue/mnli); as configs/sweet_mnli.py.
Time:      not measured here (no hub, no accelerator on the machines this was written on).
Result:    not reproduced here. The SWEET paper (Rotem et al., 2023) runs deberta-base beside bert-base in this
           low-resource MNLI setting and reports the same pattern for both: SWEET's early exits more accurate
           than Early-Exit's, so SWEET leads at the fast end of the speed-accuracy curve, while its last
           exit is slightly less accurate. Every exit owns its pooler here; the paper's code shared DeBERTa's
           context pooler and relative embeddings across exits (SWEET gives each segment its own copy).
"""

from configs import sweet_mnli


def get_config():
  config = sweet_mnli.get_config()
  config.model.checkpoint = 'microsoft/deberta-base'  # DeBERTa v1, what the paper's code runs
  config.model.exit_layers = (1, 4, 6, 12)  # as the paper's 12-layer runs
  config.model.pooling = 'cls'  # the paper pools [CLS] (DeBERTa's context pooler)
  return config
