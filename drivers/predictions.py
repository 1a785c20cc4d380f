"""Per-example outputs of an evaluation, stored compactly so that claims between methods scored on the same
test set can be tested paired (experiments/stats.py) and curves swept densely offline (floor 3: sweet_jax,
pipeline.data).

A predictions.npz holds, for one evaluated model:
  predictions  int8 (int16 for > 127 labels) [V, N]  each variant's predicted label: V exits of an exit model,
               or V probes of a PAPA cell (one per number of constant heads)
  confidence   float32 [V, N]   max softmax(logits / T_v): the calibrated confidence the exit rule reads.
               float32, not float16: near 1 float16 is 4.9e-4 apart, so thresholds such as 0.986 and 1.0 would
               send examples to other exits and the stored outputs would not reproduce the recorded curve.
  labels       [N] gold labels; index int32 [N]: each example's position in the test set
  variants     int32 [V]: the exit layers, or the ks; variant_name: 'exit_layer' | 'constant_heads'
  layers_run   int32 [V]: transformer layers run by an example answered by variant v (multi_model: cumulative)
  exit_flops   float64 [V, N]: FLOPs of example n answered by variant v; full_flops float64 [N]: the full model's
  test_sha256, params_sha256, method: strings identifying the test set, the weights scored and the method.
Cost fields are empty for PAPA cells (every probe runs the whole encoder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FILE = 'predictions.npz'
_STRINGS = ('variant_name', 'test_sha256', 'params_sha256', 'method')


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
  """One model's per-example outputs on one test set (see the module docstring for the fields' shapes).
  Invariant, checked on construction: every array agrees on V and N, and labels and predictions are ids."""
  predictions: np.ndarray
  confidence: np.ndarray
  labels: np.ndarray
  index: np.ndarray
  variants: np.ndarray
  variant_name: str
  test_sha256: str
  params_sha256: str = ''
  method: str = ''
  layers_run: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
  exit_flops: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
  full_flops: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

  def __post_init__(self):
    v, n = np.shape(self.predictions)
    checks = {'confidence': (np.shape(self.confidence), (v, n)), 'labels': (np.shape(self.labels), (n,)),
              'index': (np.shape(self.index), (n,)), 'variants': (np.shape(self.variants), (v,))}
    if len(self.layers_run):
      checks |= {'layers_run': (np.shape(self.layers_run), (v,)), 'exit_flops': (np.shape(self.exit_flops), (v, n)),
                 'full_flops': (np.shape(self.full_flops), (n,))}
    bad = [f'{k} has shape {got}, expected {want}' for k, (got, want) in checks.items() if got != want]
    if bad:
      raise ValueError('Predictions: ' + '; '.join(bad) + '.')
    if n and (min(self.labels.min(), self.predictions.min()) < 0):
      raise ValueError('Predictions: labels and predictions must be non-negative label ids.')

  @property
  def num_variants(self) -> int:
    return self.predictions.shape[0]

  def correct(self) -> np.ndarray:
    """bool [V, N]: variant v answers example n correctly."""
    return self.predictions == self.labels[None]

  def save(self, path: str) -> None:
    """Compressed npz (strings as 0-d unicode arrays: loading needs no pickle)."""
    arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> 'Predictions':
    with np.load(path, allow_pickle=False) as z:
      return cls(**{k: (str(z[k]) if k in _STRINGS else z[k]) for k in z.files})


def label_dtype(num_labels: int):
  return np.int8 if num_labels <= 127 else np.int16


@jax.jit
def _confidence(logits, temperatures):
  # The same float32 formula as sweet_jax.curves.decide, so that `>= threshold` decides as the sweep did.
  logp = jax.nn.log_softmax(logits / temperatures[:, None, None], axis=-1)
  return jnp.exp(jnp.max(logp, axis=-1))


def confidences(logits, temperatures) -> np.ndarray:
  """logits: [V, N, C]; temperatures: [V] -> float32 [V, N], max softmax(logits / T)."""
  return np.asarray(_confidence(jnp.asarray(logits, jnp.float32), jnp.asarray(temperatures, jnp.float32)))


def exits_at(p: Predictions, threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """The confidence rule offline: each example's first variant with confidence >= threshold (the last always
  answers). -> (exit_index int [N], prediction int [N])."""
  leave = p.confidence >= np.float32(threshold)
  leave[-1] = True
  exit_index = leave.argmax(0)
  return exit_index, p.predictions[exit_index, np.arange(p.predictions.shape[1])]


def correct_at(p: Predictions, threshold: float) -> np.ndarray:
  """bool [N]: the example is answered correctly at this threshold."""
  return exits_at(p, threshold)[1] == p.labels


def point_at(p: Predictions, threshold: float) -> dict[str, float]:
  """{threshold, accuracy, layer_fraction, flops_fraction} of the offline sweep at one threshold."""
  exit_index, pred = exits_at(p, threshold)
  if not len(p.layers_run):
    raise ValueError('These predictions carry no costs (a PAPA cell): no curve to sweep.')
  n = len(p.labels)
  # As sweet_jax.curves.cost_fractions: the full model runs the deepest exit's layers (multi_model: its deepest
  # member alone).
  return {'threshold': float(threshold), 'accuracy': float((pred == p.labels).mean()),
          'layer_fraction': float(p.layers_run[exit_index].sum() / (n * int(p.variants[-1]))),
          'flops_fraction': float(p.exit_flops[exit_index, np.arange(n)].sum() / p.full_flops.sum())}


def dense_curve(p: Predictions, thresholds: Sequence[float] | None = None) -> list[dict[str, float]]:
  """point_at over `thresholds` (default: 101 evenly spaced in [0, 1])."""
  ts = np.linspace(0.0, 1.0, 101) if thresholds is None else thresholds
  return [point_at(p, float(t)) for t in ts]


def dataset_sha256(dataset) -> str:
  """sha256 of a pipeline.data.TextDataset in order: its label names, text fields and labels."""
  blob = json.dumps([list(dataset.label_names), [list(f) for f in dataset.texts],
                     np.asarray(dataset.labels).tolist()], ensure_ascii=False)
  return hashlib.sha256(blob.encode('utf-8')).hexdigest()


def tree_sha256(tree: Any) -> str:
  """sha256 over a pytree's leaves in path order (path, dtype, shape, bytes): the weights that were scored."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def of_exit_model(logits, labels, temperatures, *, seq_lengths, test_set, params, encoder_config, exit_config,
                  method: str) -> Predictions:
  """An exit model's outputs on the eval split, from sweet_eval's all-exit logits.

  logits: [E, N, C]; labels: [N]; temperatures: [E]; seq_lengths: int [N], the length each example ran at."""
  from sweet_jax import curves
  logits = np.asarray(logits, np.float32)
  seq = np.asarray(seq_lengths, np.int64)
  exit_flops = np.zeros(logits.shape[:2])
  full = np.zeros(logits.shape[1])
  for length in np.unique(seq):
    rows = seq == length
    exit_flops[:, rows] = np.asarray(curves.exit_costs(encoder_config, exit_config, method, int(length)),
                                     np.float64)[:, None]
    full[rows] = curves.full_model_flops(encoder_config, exit_config, int(length))
  dtype = label_dtype(logits.shape[-1])
  return Predictions(
      predictions=logits.argmax(-1).astype(dtype), confidence=confidences(logits, temperatures),
      labels=np.asarray(labels).astype(dtype), index=np.arange(logits.shape[1], dtype=np.int32),
      variants=np.asarray(exit_config.exit_layers, np.int32), variant_name='exit_layer',
      test_sha256=dataset_sha256(test_set), params_sha256=tree_sha256(params), method=method,
      layers_run=curves.layers_run(exit_config, method).astype(np.int32), exit_flops=exit_flops, full_flops=full)


def save_eval(out_dir: str, logits, labels, temperatures, **kwargs) -> str:
  """sweet_eval's hook: writes out_dir/predictions.npz (of_exit_model's arguments) and returns its path."""
  path = os.path.join(out_dir, FILE)
  of_exit_model(logits, labels, temperatures, **kwargs).save(path)
  return path


def save_papa(papa_dir, per_k: Sequence[dict[str, Any]], test_set) -> str | None:
  """papa_experiment's hook: WORKDIR/papa/predictions.npz with one variant per k (constant heads), from each
  probe's info['outputs'] (papa_jax.probe.evaluate's predictions and confidence); None, writing nothing, when
  some probe was reused from an earlier run without being scored here (eval.py rescores them all)."""
  if not per_k or any(r.get('outputs') is None for r in per_k):
    return None
  labels = np.asarray(test_set.labels)
  dtype = label_dtype(test_set.num_labels)
  p = Predictions(predictions=np.stack([r['outputs']['predictions'] for r in per_k]).astype(dtype),
                  confidence=np.stack([r['outputs']['confidence'] for r in per_k]).astype(np.float32),
                  labels=labels.astype(dtype), index=np.arange(len(labels), dtype=np.int32),
                  variants=np.asarray([r['k'] for r in per_k], np.int32), variant_name='constant_heads',
                  test_sha256=dataset_sha256(test_set), method='papa')
  path = os.path.join(str(papa_dir), FILE)
  p.save(path)
  return path
