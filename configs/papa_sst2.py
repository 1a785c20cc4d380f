"""PAPA on SST-2 with bert-base-uncased, with the reference's hyper-parameters.

Command:   python train.py --config configs/papa_sst2.py --workdir runs/papa_sst2
           python eval.py  --config configs/papa_sst2.py --workdir runs/papa_sst2   (re-scores saved probes)
Hardware:  one GPU or TPU host with Hugging Face hub access (glue/sst2 and bert-base-uncased are downloaded);
           base-size training on CPU is a smoke test only.
Time:      not measured here (no hub, no accelerator on the machines this was written on). Estimated on one
           modern GPU: averages ~1 min, the ranking run (15 epochs of 4,210 steps, backpropagating through the
           encoder for the lambdas) ~1 h, each of the 5 probes ~15-30 min (the encoder runs every step: cached
           features would be ~44 GB of float16; set feature_cache='disk' on a host with fast local disk).
Result:    accuracy on the 872 validation sentences for k = 0, 72, 126, 135, 144 constant heads and the
           relative drop from k = 0. Expected (paper, 6-task average): ~8% relative drop with every head
           constant, little or none with half of them.
"""

import ml_collections

from pipeline import data


def get_config():
  config = ml_collections.ConfigDict()
  config.method = 'papa'  # train.py hands the whole run to papa_experiment.run

  config.model = ml_collections.ConfigDict()
  config.model.checkpoint = 'bert-base-uncased'  # hub id (12 x 768, 12 heads = 144 heads), or a local directory
  config.model.kernels = 'auto'  # 'auto' | 'portable' | 'cpu_tuned': encoder kernel forms (EncoderConfig.kernels)

  config.data = data.base_config()
  config.data.source = 'hub'  # datasets.load_dataset
  config.data.name = 'glue'  # hub dataset
  config.data.subset = 'sst2'  # its config
  config.data.text_fields = ('sentence',)  # single sentences: the first half of the fixed layout
  config.data.label_field = 'label'  # ClassLabel negative / positive
  config.data.train_split = 'train'  # 67,349 sentences: estimate, ranking and probe training
  config.data.eval_split = 'validation'  # 872 sentences (GLUE test labels are hidden)
  config.data.calibration_size = 0  # PAPA uses no calibration split
  config.data.max_seq_length = 64  # informational: PAPA lays every input out at papa.length
  config.data.seed = 42  # seeds any sampling (none by default)

  config.papa = ml_collections.ConfigDict()
  config.papa.length = 64  # fixed layout length L (reference)
  config.papa.ks = (0, 'half', 126, 135, 'all')  # the reference's sweep for BERT-base: 0, 72, 126, 135, 144
  config.papa.estimate_max_examples = 0  # 0 = the whole train split (reference)
  config.papa.batch_size = 16  # reference
  config.papa.learning_rate = 2e-5  # reference: AdamW, constant, no weight decay
  config.papa.num_epochs = 15  # reference; eval on the validation split every epoch, last epoch reported
  config.papa.dropout = 0.1  # dropout between the head's tanh layer and its classifier (BERT's hidden dropout)
  config.papa.eval_batch_size = 128  # batch of the encoder passes: averages, feature caches, evaluation
  config.papa.ranking_epochs = 15  # the ranking run uses the probe's recipe (reference)
  config.papa.ranking_max_steps = 0  # 0 = no cap
  config.papa.ranking_max_examples = 0  # 0 = the whole train split
  config.papa.ranking_learning_rate = 0.0  # 0 = papa.learning_rate (reference: one rate for lambdas and head)
  # 'auto': cache hidden states in memory when train + eval fit cache_max_gb, else run the encoder every step
  config.papa.feature_cache = 'auto'  # | 'memory' | 'disk' (a memmap in WORKDIR/papa, deleted after) | 'none'
  config.papa.cache_max_gb = 16.0  # SST-2 needs ~44 GB, so 'auto' runs the encoder every step
  config.papa.measure_speed = True  # time cached against encoder-every-step training (only when cached)
  config.papa.speed_steps = 5  # timed steps of each (after one compiling step)

  config.train = ml_collections.ConfigDict()
  config.train.seed = 42  # reference: head initialisation, dropout, batch order
  config.train.dtype = 'float32'  # encoder compute dtype; 'bfloat16' is faster on GPU/TPU
  return config
