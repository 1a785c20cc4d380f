"""Per-exit losses, their weighting, and the three training methods as (init, loss, predict) functions.

  sweet:        exits trained together, stop_gradient between segments (each exit owns its segment)
  early_exit:   the same network, no stop_gradient (lower layers get every exit's gradient)
  multi_model:  independent truncated copies of the encoder, one per exit
All losses are sum_i w_i * mean cross-entropy of exit i, weights from `exit_weights` (paper: all 1).
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


def exit_weights(num_exits: int, scheme: str = 'equal', ratio: float = 2.0) -> np.ndarray:
  """Loss weight of each exit [num_exits]: equal (SWEET paper), linear in depth i+1 (PABEE),
  or geometric ratio**i (CALM)."""
  if scheme == 'equal':
    return np.ones(num_exits, np.float32)
  if scheme == 'linear':
    return np.arange(1, num_exits + 1, dtype=np.float32)
  if scheme == 'geometric':
    return (ratio ** np.arange(num_exits)).astype(np.float32)
  raise ValueError(f'Unknown exit weighting {scheme!r}; choose from {WEIGHTINGS}.')


def exit_losses(logits, labels, example_mask):
  """Mean cross-entropy of every exit over real examples: logits [E, B, C], labels [B], mask [B] -> [E]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :])  # [E, B]
  return (ce * example_mask[None]).sum(-1) / jnp.maximum(example_mask.sum(), 1.0)


def exit_accuracies(logits, labels, example_mask):
  """Accuracy of every exit over real examples -> [E]."""
  correct = (logits.argmax(-1) == labels[None]).astype(jnp.float32)
  return (correct * example_mask[None]).sum(-1) / jnp.maximum(example_mask.sum(), 1.0)


def make_fns(method: str, encoder_config, exit_config: exits.ExitConfig, pretrained_params, *,
             weighting: str = 'equal', geometric_ratio: float = 2.0, constants=None):
  """(init, loss, predict) of a training method.

  init(rng) -> params; loss(params, batch, rng) -> (loss, metrics); predict(params, batch) -> [E, B, C].
  `constants` (PAPA matrices) are closed over: an input, never a parameter.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose from {METHODS}.')
  weights = jnp.asarray(exit_weights(exit_config.num_exits, weighting, geometric_ratio))
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
