"""What every PAPA stage reads (papa_experiment.py runs the stages): the loaded setup (data splits, frozen
encoder, tokenizer layout, run fingerprint), the token batches of a split, the probe feature caches
(papa.feature_cache 'memory' | 'disk' | 'none', papa.cache_dtype) and the one evaluation path (_evaluator)
that training and rescoring share.

Imports go one way: papa_experiment imports this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

import encoder_jax
from papa_jax import probe
from pipeline import data, fingerprint, reporting
from pipeline.config_fields import get as _get


def _log(message: str) -> None:
  print(f'[papa {time.strftime("%H:%M:%S")}] {message}', flush=True)


@dataclasses.dataclass
class _Setup:
  config: Any
  papa_dir: pathlib.Path
  splits: data.Splits
  enc_config: encoder_jax.EncoderConfig
  enc_params: Any
  encode_fn: Any
  length: int
  seed: int
  fingerprint: dict  # pipeline.fingerprint.of_run: what every stage's saved output must have been made from

  @property
  def p(self):
    return self.config.papa

  @property
  def total_heads(self) -> int:
    return self.enc_config.num_layers * self.enc_config.num_heads

  @property
  def num_labels(self) -> int:
    return self.splits.train.num_labels

  def batches(self, dataset, batch_size, *, epoch=0, shuffle=False):
    return data.iterate_batches(dataset, self.encode_fn, batch_size, seed=self.seed, epoch=epoch, shuffle=shuffle)


def _setup(config, workdir) -> _Setup:
  papa_dir = pathlib.Path(workdir) / 'papa'
  # Every process of a multi-host job computes the same thing on its own devices; only process 0 writes
  # results (each process keeps its own disk feature cache, if any).
  papa_dir.mkdir(parents=True, exist_ok=True)
  if reporting.is_writer():
    (papa_dir / 'config.json').write_text(config.to_json_best_effort(indent=1) + '\n')
  splits = data.load_splits(config.data)
  _log(f'data: {json.dumps(splits.summary())}')
  checkpoint = config.model.checkpoint
  enc_config, enc_params = encoder_jax.load_pretrained(checkpoint, dtype=_get(config.train, 'dtype', 'float32'),
                                                       kernels=_get(config.model, 'kernels', 'auto'))
  enc_params.pop('pooler', None)  # the probe has its own head
  length = int(config.papa.length)
  if length > enc_config.max_length:
    raise ValueError(f'papa.length {length} exceeds the position table of {checkpoint} ({enc_config.max_length}).')
  tokenizer = encoder_jax.load_tokenizer(checkpoint)
  encode_fn = encoder_jax.make_encode_fn(tokenizer, enc_config, layout_length=length)  # checks token types
  return _Setup(config, papa_dir, splits, enc_config, jax.device_put(enc_params), encode_fn, length,
                int(config.train.seed), fingerprint.of_run(config, splits))


# ----------------------------------------------------------------------------- token batches, feature caches

@dataclasses.dataclass
class _Tokens:
  """Token batches of a split in a fixed order (feature caches and evaluation read them), and the layout
  slots its examples occupy: masks, bool [examples, L], the real tokens of each real example."""
  batches: list
  masks: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.masks)

  @property
  def positions(self) -> int:
    """How many layout slots some example occupies."""
    return int(self.masks.any(0).sum())


def _tokens(s: _Setup, dataset) -> _Tokens:
  batches = list(s.batches(dataset, int(s.p.eval_batch_size)))
  masks = [np.asarray(b['attention_mask'])[np.asarray(b['example_mask']) > 0] > 0 for b in batches]
  return _Tokens(batches, np.concatenate(masks) if masks else np.zeros((0, s.length), bool))


def _cache_dtype(s: _Setup) -> np.dtype:
  """papa.cache_dtype: 'float16' (default; halves memory, ~5e-4 relative error) or 'float32'."""
  name = str(_get(s.p, 'cache_dtype', 'float16'))
  if name not in ('float16', 'float32'):
    raise ValueError(f"papa.cache_dtype must be 'float16' or 'float32', got {name!r}.")
  return np.dtype(name)


def cache_mode(s: _Setup, train: _Tokens, evaluation: _Tokens) -> str:
  """'memory' | 'disk' | 'none' from papa.feature_cache ('auto': memory when both caches fit cache_max_gb)."""
  mode = str(_get(s.p, 'feature_cache', 'auto'))
  if mode not in ('auto', 'memory', 'disk', 'none'):
    raise ValueError(f"papa.feature_cache must be 'auto', 'memory', 'disk' or 'none', got {mode!r}.")
  c, dtype = s.enc_config, _cache_dtype(s)
  need = sum(probe.estimate_cache_bytes(t.num_examples, c.num_layers, t.positions, c.hidden_size, dtype)
             for t in (train, evaluation))
  budget = float(_get(s.p, 'cache_max_gb', 4.0)) * 2**30
  if mode == 'auto':
    mode = 'memory' if need <= budget else 'none'
  _log(f'features: {need / 2**30:.2f} GiB as {dtype.name} for train + eval -> feature_cache {mode!r}')
  return mode


def _cache_path(s: _Setup, mode: str, name: str) -> pathlib.Path | None:
  """Where a disk feature cache goes (one per process of a multi-host job); None unless mode is 'disk'."""
  if mode != 'disk':
    return None
  own = f'.process{jax.process_index()}' if jax.process_count() > 1 else ''
  return s.papa_dir / f'features_{name}{own}.npy'


def _remove_disk_caches(s: _Setup) -> None:
  for name in ('train', 'eval'):
    _cache_path(s, 'disk', name).unlink(missing_ok=True)  # this process's disk caches are scratch, not results


def _probe_config(s: _Setup, heads):
  return s.enc_config.with_heads('constant', heads) if heads else s.enc_config


def _evaluator(s: _Setup, cfg_k, constants, mode: str, eval_tokens: _Tokens):
  """(head -> eval accuracy, the eval feature cache or None): the one evaluation path, called after every
  training epoch and by rescore, so that the two agree.

  'none' runs the encoder on every eval batch; 'memory' and 'disk' run it once into a cache (papa.cache_dtype)
  that every call reads. In float32 the three give the same accuracy.
  """
  bs = int(s.p.eval_batch_size)
  if mode == 'none':
    _, predict = probe.online_fns(cfg_k, float(s.p.dropout))
    frozen = {'encoder': s.enc_params, 'constants': constants}
    cache, batches = None, lambda: eval_tokens.batches
  else:
    cache = probe.cache_features(cfg_k, s.enc_params, eval_tokens.batches, constants=constants,
                                 path=_cache_path(s, mode, 'eval'), dtype=_cache_dtype(s))
    _, predict = probe.cached_fns(float(s.p.dropout))
    frozen = {'positions': jax.device_put(cache.positions)}
    batches = lambda: cache.batches(bs)

  def evaluate_head(head) -> float:
    out = probe.evaluate(head, frozen, predict, batches())
    evaluate_head.last = out  # the per-example outputs of the latest call (drivers.predictions stores them)
    return out['accuracy']
  return evaluate_head, cache
