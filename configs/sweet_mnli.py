"""SWEET, the paper's setup: bert-base-uncased on MNLI, 6,000 training examples (Rotem et al., 2023).

Command:   python train.py --config configs/sweet_mnli.py --workdir runs/sweet_mnli
           python eval.py  --config configs/sweet_mnli.py --workdir runs/sweet_mnli
Hardware:  an accelerator (one GPU, or a TPU; see README "Run on a TPU"/"Run on GPUs"); needs the
           Hugging Face hub for the weights and glue/mnli. On a 2-core CPU a step takes ~20 s: smoke only.
Time:      750 steps of batch 16 at length 256: minutes on one modern GPU (not yet measured here).
Result:    the paper reports (BERT-base, 6k MNLI) per-exit accuracies rising with depth, SWEET's early
           exits above Early-Exit's by ~1 point; not reproduced here (no hub access on our machines).
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.model.checkpoint = 'bert-base-uncased'  # hub id; a local directory works too
  config.model.exit_layers = (1, 4, 6, 12)  # as the paper's BERT-base run
  config.model.pooling = 'cls'  # BERT's [CLS] pooler, as the paper
  config.data.source = 'hub'
  config.data.name = 'glue'
  config.data.subset = 'mnli'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation_matched'
  config.data.text_fields = ('premise', 'hypothesis')
  config.data.label_field = 'label'
  config.data.max_train_samples = 6000  # a seeded random sample (the reference took the first 6,000)
  config.data.max_seq_length = 256  # as the paper
  config.train.dtype = 'float32'  # 'bfloat16' on accelerators for speed
  config.train.adam_eps = 1e-8  # the reference's (Hugging Face Trainer default adam_epsilon)
  return config
