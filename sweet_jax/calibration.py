"""Temperature scaling: one scalar temperature per exit, fit by minimising the negative log-likelihood.

The reference fits temperatures on the evaluation set itself; here they are fit on logits of a held-out
part of the training data (pipeline.data's calibration split) and only applied to the scored data.

The fit is a bounded golden-section search over log T, in float64 numpy, all exits at once:
  * deterministic (no optimiser state, no random init, no learning rate to tune);
  * robust: the NLL is convex in 1/T (logsumexp of a linear function of 1/T, minus a linear term), hence
    unimodal in log T, so golden-section search finds the global minimum on the interval;
  * bounded: T is kept in [min_temperature, max_temperature]; perfectly separable held-out data would
    otherwise drive T to 0 (and a constant classifier T to infinity), and the bound is returned instead.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def nll(logits, labels, temperatures) -> np.ndarray:
  """Mean negative log-likelihood of each exit at its temperature.

  Args:
    logits: [E, N, C] (or [N, C], treated as one exit).
    labels: int [N].
    temperatures: [E] (or a scalar).
  Returns:
    [E] float64 (a scalar array for [N, C] logits).
  """
  z = np.asarray(logits, np.float64)
  squeeze = z.ndim == 2
  if squeeze:
    z = z[None]
  t = np.broadcast_to(np.asarray(temperatures, np.float64).reshape(-1), (z.shape[0],))
  z = z / t[:, None, None]
  z_max = z.max(-1, keepdims=True)
  log_norm = np.log(np.exp(z - z_max).sum(-1)) + z_max[..., 0]  # [E, N]
  labels = np.asarray(labels, np.int64)
  picked = np.take_along_axis(z, labels[None, :, None], axis=-1)[..., 0]  # [E, N]
  out = (log_norm - picked).mean(-1)
  return out[0] if squeeze else out


def fit_temperatures(logits, labels, *, min_temperature: float = 0.05, max_temperature: float = 20.0,
                     iterations: int = 100) -> np.ndarray:
  """The NLL-minimising temperature of every exit.

  Args:
    logits: [E, N, C] held-out logits of every exit (never the scored data).
    labels: int [N].
    min_temperature, max_temperature: the search interval; a minimum outside it returns the bound.
    iterations: golden-section steps; each shrinks the log-T interval by 0.618 (100 steps: far below
      float64 resolution for the default interval).
  Returns:
    temperatures: float32 [E].
  """
  z = np.asarray(logits, np.float64)
  if z.ndim != 3:
    raise ValueError(f'logits must be [exits, examples, classes], got shape {z.shape}.')
  labels = np.asarray(labels)
  if labels.shape != (z.shape[1],):
    raise ValueError(f'labels must be [{z.shape[1]}], got shape {labels.shape}.')
  if z.shape[1] == 0:
    raise ValueError('Cannot fit temperatures on zero examples.')
  if not 0 < min_temperature < max_temperature:
    raise ValueError(f'Need 0 < min_temperature < max_temperature, got {min_temperature}, {max_temperature}.')
  num_exits = z.shape[0]
  f = lambda log_t: nll(z, labels, np.exp(log_t))
  lo = np.full(num_exits, np.log(min_temperature))
  hi = np.full(num_exits, np.log(max_temperature))
  # Golden-section search, vectorised over exits: evaluate two interior points, drop the worse side.
  for _ in range(iterations):
    # Both interior points are recomputed from the interval (vectorised over exits, so no carrying over).
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    left = f(a) <= f(b)  # then the minimum lies in [lo, b], else in [a, hi]
    hi = np.where(left, b, hi)
    lo = np.where(left, lo, a)
  best = (lo + hi) / 2
  # The interior search never reaches the interval's ends; compare against them explicitly.
  cands = np.stack([best, np.full(num_exits, np.log(min_temperature)), np.full(num_exits, np.log(max_temperature))])
  values = np.stack([f(c) for c in cands])
  pick = cands[values.argmin(0), np.arange(num_exits)]
  return np.exp(pick).astype(np.float32)


def apply_temperatures(logits, temperatures):
  """logits [E, ..., C] / temperatures [E] (broadcast over the rest)."""
  t = np.asarray(temperatures, np.float32).reshape((-1,) + (1,) * (np.ndim(logits) - 1))
  return logits / t
