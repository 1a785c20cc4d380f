"""Per-exit losses, their weighting, and the three training methods as (init, loss, predict) functions.

  sweet:        exits trained together, stop_gradient between segments (each exit owns its segment)
  early_exit:   the same network, no stop_gradient (lower layers get every exit's gradient)
  multi_model:  independent truncated copies of the encoder, one per exit
All losses are sum_i w_i * mean cross-entropy of exit i, weights from `exit_weights` (paper: all 1).
Gradients are clipped per `param_groups` (each SWEET segment with its head, each Multi-Model member).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from sweet_jax import exits

METHODS = ('sweet', 'early_exit', 'multi_model')
WEIGHTINGS = ('equal', 'linear', 'geometric')


def exit_weights(exit_layers, scheme: str = 'equal', ratio: float = 2.0) -> np.ndarray:
  """Loss weight of each exit [num_exits], for exits after 1-indexed layers `exit_layers`.

  equal: all 1 (SWEET paper). linear: the exit's layer depth, normalised to sum 1, as PABEE
  (sum_i i * L_i / sum_i i over its per-layer exits): (1, 4, 6, 12) -> (1, 4, 6, 12) / 23.
  geometric: ratio**i for the i-th exit (CALM).
  """
  layers = np.asarray(exit_layers, np.float64)
  if layers.ndim != 1 or not len(layers):
    raise ValueError(f'exit_layers must be a non-empty sequence of layers, got {exit_layers!r}.')
  if scheme == 'equal':
    return np.ones(len(layers), np.float32)
  if scheme == 'linear':
    return (layers / layers.sum()).astype(np.float32)
  if scheme == 'geometric':
    return (ratio ** np.arange(len(layers))).astype(np.float32)
  raise ValueError(f'Unknown exit weighting {scheme!r}; choose from {WEIGHTINGS}.')


def exit_losses(logits, labels, example_mask):
  """Mean cross-entropy of every exit over real examples: logits [E, B, C], labels [B], mask [B] -> [E]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :])  # [E, B]
  return (ce * example_mask[None]).sum(-1) / jnp.maximum(example_mask.sum(), 1.0)


def exit_accuracies(logits, labels, example_mask):
  """Accuracy of every exit over real examples -> [E]."""
  correct = (logits.argmax(-1) == labels[None]).astype(jnp.float32)
  return (correct * example_mask[None]).sum(-1) / jnp.maximum(example_mask.sum(), 1.0)


def param_groups(method: str, exit_config: exits.ExitConfig):
  """params -> group label tree for per-group gradient clipping (pipeline Method.param_groups), or None.

  sweet: each segment with its own head (exit i's loss reaches nothing else, so nothing else may rescale its
  update); multi_model: each member, as the reference trains each as its own run; early_exit: None, one
  global clip (its exits share the lower layers).
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose from {METHODS}.')
  if method == 'sweet':
    return functools.partial(exits.exit_model_groups, exit_config)
  if method == 'multi_model':
    return exits.multi_model_groups
  return None


def make_fns(method: str, encoder_config, exit_config: exits.ExitConfig, pretrained_params, *,
             weighting: str = 'equal', geometric_ratio: float = 2.0, constants=None):
  """(init, loss, predict) of a training method.

  init(rng) -> params; loss(params, batch, rng) -> (loss, metrics); predict(params, batch) -> [E, B, C].
  `constants` (PAPA matrices) are closed over: an input, never a parameter.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose from {METHODS}.')
  weights = jnp.asarray(exit_weights(exit_config.exit_layers, weighting, geometric_ratio))
  if method == 'multi_model':
    init_model, forward = exits.init_multi_model, exits.forward_multi_model
  else:
    # SWEET: each segment gets its own copy of parameters the architecture shares across layers.
    init_model = functools.partial(exits.init_exit_model, segment_copies=(method == 'sweet'))
    forward = functools.partial(exits.forward, stop_gradient=(method == 'sweet'))

  def init(rng):
    return init_model(rng, encoder_config, pretrained_params, exit_config)

  def loss(params, batch, rng):
    logits = forward(encoder_config, exit_config, params, batch, constants=constants, rng=rng)
    per_exit = exit_losses(logits, batch['labels'], batch['example_mask'])
    metrics: dict[str, Any] = {'loss': (weights * per_exit).sum()}
    for i, (l, a) in enumerate(zip(per_exit, exit_accuracies(logits, batch['labels'], batch['example_mask']))):
      metrics[f'exit_{i}/loss'] = l
      metrics[f'exit_{i}/accuracy'] = a
    return metrics['loss'], metrics

  def predict(params, batch):
    return forward(encoder_config, exit_config, params, batch, constants=constants, rng=None)

  return init, loss, predict
