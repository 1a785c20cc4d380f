"""Gradient conflict between exits: do the exits of an Early-Exit model pull shared weights apart?

The paper motivates SWEET by conflicting updates: in Early-Exit every exit's loss reaches the layers below
it, and for a shared weight the exits' gradients point in different directions. Measured directly here: the
gradient of every exit's loss with respect to the shared encoder (one jax.jacrev over the vector of exit
losses), then, per layer (each layer's gradients flattened into one vector; the embeddings are a layer of
their own) and over the whole encoder, the cosine similarity of every pair of exits. A cosine near 1 means
the exits agree; near 0, unrelated; negative, they conflict. An exit whose loss does not reach a layer (the
layer sits above it) has a zero gradient there and no cosine (None in the report).

How to use after training (train.py, for sweet and early_exit; multi_model shares no weight):

  from sweet_jax import analysis
  batches = itertools.islice(data.iterate_batches(splits.train, built.encode_fn, 32, seed=0, epoch=0,
                                                  shuffle=True), 8)
  analysis.analyze_and_write(built.encoder_config, built.exit_config, params, batches,
                             os.path.join(workdir, 'analysis'), constants=built.constants)

writes WORKDIR/analysis/gradient_conflict.json and gradient_conflict.png. The loss is the Early-Exit loss (no
stop-gradient) whatever the params were trained with, so a SWEET model can be asked how much its exits would
conflict if their gradients were shared.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from sweet_jax import exits, objectives


def _groups(tree: Mapping[str, Any]) -> list[str]:
  """Top-level names of the encoder params in model order: embeddings, layers_0, layers_1, ..."""
  names = list(tree)
  layers = sorted((n for n in names if n.startswith('layers_')), key=lambda n: int(n.split('_')[1]))
  return [n for n in names if not n.startswith('layers_')] + layers


def _cosines(vectors: np.ndarray) -> list[list[float | None]]:
  """vectors [E, P] -> E x E cosine similarities (None where either vector is zero)."""
  v = np.asarray(vectors, np.float64)
  norms = np.linalg.norm(v, axis=1)
  gram = v @ v.T
  out = []
  for i in range(len(v)):
    out.append([float(np.clip(gram[i, j] / (norms[i] * norms[j]), -1.0, 1.0)) if norms[i] > 0 and norms[j] > 0
                else None for j in range(len(v))])
  return out


def _mean_pairwise(matrix) -> float | None:
  vals = [matrix[i][j] for i in range(len(matrix)) for j in range(i + 1, len(matrix)) if matrix[i][j] is not None]
  return float(np.mean(vals)) if vals else None


def conflict_from_losses(losses_fn: Callable[[Any, Any], jax.Array], shared: Mapping[str, Any],
                         batches: Iterable[Any], *, weight_fn: Callable[[Any], float] = lambda b: 1.0
                         ) -> dict[str, Any]:
  """Per-group cosine similarity of per-exit gradients, for any vector of exit losses.

  Args:
    losses_fn: (shared params, batch) -> [E] losses (differentiated with jax.jacrev).
    shared: the parameters the exits share, a dict of groups (e.g. embeddings, layers_0, ...).
    batches: one or more batches; each gradient is the weighted mean over them (weights from weight_fn),
      i.e. the gradient of the mean loss over all their examples.
  Returns:
    a JSON-able dict: 'groups' [names], 'cosine' {group: E x E}, 'mean_cosine' {group: mean over exit pairs
    i < j that both reach it}, 'grad_norm' {group: [E]}, 'overall' E x E over every shared parameter,
    'losses' [E] (weighted mean), 'batches'.
  """
  # One compiled program gives the Jacobian [E, ...] and, as its auxiliary output, the losses themselves.
  jac_fn = jax.jit(jax.jacrev(lambda p, b: (losses_fn(p, b),) * 2, has_aux=True))
  total, acc, losses, count = 0.0, None, None, 0
  for batch in batches:
    w = float(weight_fn(batch))
    jac, value = jax.device_get(jac_fn(shared, batch))  # every leaf of jac [E, *shape]; value [E]
    value = np.asarray(value, np.float64)
    jac = jax.tree.map(lambda g: np.asarray(g, np.float64) * w, jac)
    acc = jac if acc is None else jax.tree.map(np.add, acc, jac)
    losses = value * w if losses is None else losses + value * w
    total += w
    count += 1
  if acc is None:
    raise ValueError('No batches to measure gradients on.')
  acc = jax.tree.map(lambda g: g / total, acc)
  groups = _groups(acc)
  flat = {g: np.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(acc[g])], axis=1)
          for g in groups}
  cosine = {g: _cosines(flat[g]) for g in groups}
  return {
      'groups': groups,
      'cosine': cosine,
      'mean_cosine': {g: _mean_pairwise(cosine[g]) for g in groups},
      'grad_norm': {g: np.linalg.norm(flat[g], axis=1).tolist() for g in groups},
      'overall': _cosines(np.concatenate([flat[g] for g in groups], axis=1)),
      'losses': (losses / total).tolist(),
      'batches': count,
  }


def gradient_conflict(encoder_config, exit_config: exits.ExitConfig, params, batches, *,
                      constants=None) -> dict[str, Any]:
  """Gradient conflict of an exit model's exits on its shared encoder.

  Args:
    params: exit-model layout {'encoder', 'heads'} (sweet or early_exit); heads are held fixed.
    batches: a batch dict (int32 [B, S] input_ids, attention_mask, token_type_ids; labels [B];
      example_mask [B]) or an iterable of them; gradients are averaged over their real examples.
  Returns:
    conflict_from_losses's dict, plus 'exit_layers' and the exit that owns each layer group.
  """
  if 'encoder' not in params:
    raise ValueError('gradient_conflict needs exit-model params {encoder, heads}; multi_model members share '
                     'no parameter, so there is nothing to conflict over.')
  if isinstance(batches, Mapping):
    batches = [batches]
  heads = params['heads']

  def losses_fn(encoder, batch):
    logits = exits.forward(encoder_config, exit_config, dict(params, encoder=encoder, heads=heads), batch,
                           stop_gradient=False, constants=constants)
    return objectives.exit_losses(logits, batch['labels'], batch['example_mask'])

  keys = ('input_ids', 'attention_mask', 'token_type_ids', 'labels', 'example_mask')
  stripped = ({k: b[k] for k in keys if k in b} for b in batches)
  report = conflict_from_losses(losses_fn, params['encoder'], stripped,
                                weight_fn=lambda b: float(np.sum(b['example_mask'])))
  report['exit_layers'] = list(exit_config.exit_layers)
  # Which segment each group belongs to (embeddings: 0): its first exit is the lowest that reaches it.
  starts = [0] + list(exit_config.exit_layers[:-1])
  report['segment'] = {g: (0 if not g.startswith('layers_') else
                           max(i for i, s in enumerate(starts) if int(g.split('_')[1]) >= s))
                       for g in report['groups']}
  return report


def plot(report: Mapping[str, Any], path: str) -> None:
  """Two panels: per-layer cosine of every exit pair (lines), and the whole-encoder cosine matrix (heatmap)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  groups = report['groups']
  num_exits = len(report['overall'])
  names = [f'exit {i}' if 'exit_layers' not in report else f'exit {i} (L{report["exit_layers"][i]})'
           for i in range(num_exits)]
  fig, (ax_l, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={'width_ratios': [3, 2]})
  x = np.arange(len(groups))
  for i in range(num_exits):
    for j in range(i + 1, num_exits):
      y = [report['cosine'][g][i][j] for g in groups]
      y = [np.nan if v is None else v for v in y]
      ax_l.plot(x, y, marker='o', label=f'{i} vs {j}')
  ax_l.axhline(0.0, color='grey', lw=0.8)
  ax_l.set_xticks(x, [g.replace('layers_', 'L').replace('embeddings', 'emb') for g in groups])
  ax_l.set_ylim(-1.05, 1.05)
  ax_l.set_ylabel('cosine of exit gradients')
  ax_l.set_title('Per layer (a pair appears where both exits reach the layer)')
  ax_l.legend(fontsize=8, ncol=2)
  matrix = np.array([[np.nan if v is None else v for v in row] for row in report['overall']])
  im = ax_h.imshow(matrix, vmin=-1, vmax=1, cmap='RdBu')
  for i in range(num_exits):
    for j in range(num_exits):
      if not math.isnan(matrix[i, j]):
        ax_h.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center', fontsize=8,
                  color='white' if abs(matrix[i, j]) > 0.6 else 'black')
  ax_h.set_xticks(range(num_exits), names, rotation=30, fontsize=8)
  ax_h.set_yticks(range(num_exits), names, fontsize=8)
  ax_h.set_title('Whole shared encoder')
  fig.colorbar(im, ax=ax_h, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(report: Mapping[str, Any], out_dir: str) -> tuple[str, str]:
  """out_dir/gradient_conflict.json and .png; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, 'gradient_conflict.json')
  png_path = os.path.join(out_dir, 'gradient_conflict.png')
  with open(json_path, 'w') as f:
    json.dump(report, f, indent=1)
  plot(report, png_path)
  return json_path, png_path


def analyze_and_write(encoder_config, exit_config, params, batches, out_dir: str, *, constants=None
                      ) -> dict[str, Any]:
  """gradient_conflict(...) then write(report, out_dir): the one call for train.py after training."""
  report = gradient_conflict(encoder_config, exit_config, params, batches, constants=constants)
  write(report, out_dir)
  return report
