"""Floor 3: what ties the methods to the pipeline, imported by the programs (train.py, eval.py, predict.py,
export.py), experiments/ and bench/.

- methods: the registry, config.method -> a pipeline.train_loop.Method.
- sweet_eval: evaluation of an exit model (calibration, curve, measured adaptive speedup).
- papa_experiment, papa_setup: PAPA's staged experiment and what its stages share.
- predictor, exporter: a trained workdir in use (early-exit prediction; Hugging Face export).
"""
