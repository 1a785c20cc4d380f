"""Which heads to make constant: PAPA's lambda-gated ranking run.

Every head becomes 'mixed': sigmoid(lambda_h) * A_dynamic + (1 - sigmoid(lambda_h)) * C_h, with C_h the
estimated constant matrix (masked and renormalised per example by the encoder) and one scalar lambda per
head initialised to 0. Only the lambdas and a fresh probe head train (same recipe as the probe); the
encoder stays frozen and deterministic. Unlike the probe, features cannot be cached here: the lambdas
change the attention, so the encoder runs (and is differentiated through, for the lambdas) every step.

Heads sorted by lambda ascending, one global order across layers: the first k are those that leaned most
towards the constant, and making k heads constant means exactly those.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax
from papa_jax import probe

Head = tuple[int, int]


def init_lambdas(num_layers: int, num_heads: int) -> jax.Array:
  """[layers, heads] zeros: every head starts as an even mix of dynamic and constant attention."""
  return jnp.zeros((num_layers, num_heads), jnp.float32)


@functools.lru_cache(maxsize=16)
def gated_fns(enc_config: encoder_jax.EncoderConfig, dropout: float) -> tuple[probe.LossFn, probe.PredictFn]:
  """Loss and predict of the ranking run (cached per arguments, so its jitted step compiles once).

  params = {'head': probe head, 'lambdas': [layers, heads]}; frozen = {'encoder': encoder params,
  'constants': [layers, heads, L, L]}; batch = token dict with labels and example_mask.
  """
  mixed = enc_config.with_heads('mixed', 'all')

  def predict(params, frozen, batch, rng=None):
    h = probe.encoder_features(mixed, frozen['encoder'], batch, frozen['constants'], gates=params['lambdas'])
    return probe.head_logits(params['head'], h, batch['attention_mask'], dropout=dropout, rng=rng)

  def loss(params, frozen, batch, rng):
    return probe.cross_entropy(predict(params, frozen, batch, rng), batch['labels'], batch['example_mask'])

  return loss, lambda params, frozen, batch: predict(params, frozen, batch)


def train_lambdas(enc_config: encoder_jax.EncoderConfig, enc_params, constants, num_labels: int,
                  epoch_batches: Callable[[int], Iterable[probe.Batch]], *, length: int, learning_rate: float,
                  num_epochs: int, max_steps: int | None = None, dropout: float = 0.1, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> tuple[np.ndarray, probe.Params, list[dict]]:
  """The ranking run.

  Args:
    enc_config, enc_params: the pretrained encoder (frozen).
    constants: [layers, heads, L, L] averaged attention (averages.AttentionSums.averages).
    epoch_batches: epoch -> token batches in the fixed layout of length L.
    max_steps: cap on steps (a budget for CPU demos; None = num_epochs full epochs).
  Returns:
    (lambdas float32 [layers, heads], the jointly trained probe head, per-epoch history).
  """
  params = {
      'head': probe.init_head(jax.random.key(seed), enc_config.num_layers, enc_config.hidden_size, length,
                              num_labels),
      'lambdas': init_lambdas(enc_config.num_layers, enc_config.num_heads),
  }
  frozen = {'encoder': enc_params, 'constants': jnp.asarray(constants, jnp.float32)}
  loss_fn, _ = gated_fns(enc_config.replace(head_kinds=None), float(dropout))
  params, history = probe.fit(params, frozen, loss_fn, epoch_batches, learning_rate=learning_rate,
                              num_epochs=num_epochs, seed=seed, max_steps=max_steps, log=log)
  return np.asarray(params['lambdas'], np.float32), params['head'], history


def rank_heads(lambdas) -> list[Head]:
  """All (layer, head) pairs by lambda ascending, one global order across layers.

  Ties (e.g. untrained lambdas) keep (layer, head) order, so the ranking is deterministic.
  """
  lam = np.asarray(lambdas, np.float64)
  order = np.argsort(lam.ravel(), kind='stable')
  return [tuple(int(x) for x in np.unravel_index(i, lam.shape)) for i in order]


def constant_heads(ranking: Sequence[Sequence[int]], k: int) -> list[Head]:
  """The first k heads of the ranking: those to make constant."""
  if not 0 <= k <= len(ranking):
    raise ValueError(f'k={k} is outside 0..{len(ranking)} (the number of ranked heads).')
  return [(int(l), int(h)) for l, h in ranking[:k]]


def resolve_k(k: Any, total: int) -> int:
  """A k from a config: an int, or 'half' (total // 2) or 'all' (total); 'none' means 0."""
  if isinstance(k, str):
    named = {'none': 0, 'half': total // 2, 'all': total}
    if k not in named:
      raise ValueError(f"k must be an int or one of {sorted(named)}, got {k!r}.")
    return named[k]
  k = int(k)
  if not 0 <= k <= total:
    raise ValueError(f'k={k} is outside 0..{total} heads.')
  return k
