"""PAPA on all-mpnet-base-v2 (12 x 768, 144 heads) and movie-review sentences, offline after one fetch.

Command:   python train.py --config configs/papa_demo_mpnet.py --workdir runs/papa_demo_mpnet
Hardware:  as configs/sweet_demo_mpnet.py (weights fetched once into ~/.cache/sweet_papa_jax).
Time:      ~19 min on 2 CPU cores, from the stages of the same configuration measured in the PAPA study
           (cell mpnet_tweets_s42, 2026-12-02, quiet cores): averages 1.7 min, ranking run 4.7 min, then per k
           (three here) 2.7 min of encoder pass and 1.2-1.4 min of probe training. On one GPU: not measured
           (no GPU was lent to these sessions).
Result:    the PAPA study (experiments/papa_study.py) runs this configuration with 6 values of k; see
           README's Results. The PAPA paper reports that stronger encoders lose more when their attention is
           made constant (BERT, RoBERTa, DeBERTa; base and large).
"""

from configs import papa_demo


def get_config():
  config = papa_demo.get_config()
  config.model.checkpoint = 'mpnet-base'  # all-mpnet-base-v2 (12 x 768, 12 heads = 144 heads)
  return config
