"""PAPA on MNLI (sentence pairs) with bert-base-uncased, with the reference's hyper-parameters.

Command:   python train.py --config configs/papa_mnli.py --workdir runs/papa_mnli
           python eval.py  --config configs/papa_mnli.py --workdir runs/papa_mnli   (re-scores saved probes)
Hardware:  one GPU or TPU host with Hugging Face hub access (glue/mnli and bert-base-uncased are downloaded).
Time:      not measured here (no hub, no accelerator on the machines this was written on). Estimated on one
           modern GPU: averages ~5 min, the ranking run (15 epochs of 24,544 steps, backpropagating through
           the encoder for the lambdas) several hours, each of the 5 probes 1-2 h (the encoder runs every
           step: cached features would be ~500 GB). For a quicker ranking set papa.ranking_max_steps.
Result:    accuracy on the 9,815 matched validation pairs for k = 0, 72, 126, 135, 144 constant heads and
           the relative drop from k = 0. Expected (paper, 6-task average): ~8% relative drop with every head
           constant, little or none with half of them.

Pairs: [CLS] premise in positions [0, 32), [SEP] hypothesis from 32, the final [SEP] at 63; token type ids
move with the hypothesis (the reference left them behind; encoder_jax.papa_layout fixes that).
"""

from configs import papa_sst2


def get_config():
  config = papa_sst2.get_config()  # the model and the reference recipe are the same; only the task differs
  config.data.subset = 'mnli'  # glue config
  config.data.text_fields = ('premise', 'hypothesis')  # a pair: the two halves of the fixed layout
  config.data.eval_split = 'validation_matched'  # 9,815 pairs (train: 392,702 pairs)
  return config
