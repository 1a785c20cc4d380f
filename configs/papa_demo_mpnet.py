"""PAPA on all-mpnet-base-v2 (12 x 768, 144 heads) and movie-review sentences, offline after one fetch.

Command:   python train.py --config configs/papa_demo_mpnet.py --workdir runs/papa_demo_mpnet
Hardware:  as configs/sweet_demo_mpnet.py (weights fetched once into ~/.cache/sweet_papa_jax).
Time:      not measured end to end; the encoder passes dominate (configs/papa_demo.py: ~20 ms per
           sentence for MiniLM on 2 cores), and a base-size forward is ~8x MiniLM's, so expect ~1.5 h on
           2 CPU cores; minutes on one GPU.
Result:    not run here. The PAPA paper reports that stronger encoders lose more when their attention is
           made constant (BERT, RoBERTa, DeBERTa; base and large).
"""

from configs import papa_demo


def get_config():
  config = papa_demo.get_config()
  config.model.checkpoint = 'mpnet-base'  # all-mpnet-base-v2 (12 x 768, 12 heads = 144 heads)
  return config
