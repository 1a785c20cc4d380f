"""The small pieces the layer and every architecture family build from: parameter holders under the names
Flax's own modules use, the dense product in its two forms, exact GELU, and head selection.

No module here knows an architecture; encoder_jax/model.py and encoder_jax/architectures/ import them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from encoder_jax import tuning

init = nn.initializers.normal(stddev=0.02)  # BERT's initialisation


class Table(nn.Module):
  """An embedding table [rows, H] under the name Flax's nn.Embed uses ('embedding')."""
  shape: tuple[int, int]

  @nn.compact
  def __call__(self):
    return self.param('embedding', init, self.shape)


class Weights(nn.Module):
  """A kernel and a bias, under the names nn.Dense uses; the layer does the arithmetic itself.

  The attention projections are per head: kernel [in, heads, head_dim] and bias [heads, head_dim] (the
  output projection [heads, head_dim, out]), so that choosing heads is a static slice of the weights.
  Without use_bias there is no bias parameter and the bias returned is a constant zero (nothing to train).
  """
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    kernel = self.param('kernel', init, self.kernel_shape)
    if not self.use_bias:
      return kernel, jnp.zeros(self.bias_shape, kernel.dtype)
    return kernel, self.param('bias', nn.initializers.zeros, self.bias_shape)


def dense(x, kernel, bias, kernels: str = 'auto'):
  """x [batch, seq, in] @ kernel [in, out] + bias [out], as one 2-D matmul over all tokens.

  Flattening the tokens first matters for training on CPU: the weight gradient becomes a single
  [in, tokens] x [tokens, out] product that XLA runs directly, where with 3-D operands it transposed the
  [tokens, out] gradient into a copy and then used a slower matmul (about 17% of a feed-forward block's
  train step). `kernels` picks the bias add's form (tuning.pick): _add_bias_as_matmul or a plain sum.
  """
  y = x.reshape(-1, x.shape[-1]) @ kernel
  y = tuning.pick(kernels, _add_bias_as_matmul, _add_bias, y, bias)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def _add_bias(y, bias):
  """y [tokens, out] + bias [out]; the bias gradient is a column reduction (the portable form)."""
  return y + bias


@jax.custom_jvp
def _add_bias_as_matmul(y, bias):
  """y [tokens, out] + bias [out]; the same sum, with a derivative rule that makes the bias gradient a
  matmul (ones [1, tokens] @ dy) instead of a column reduction, which XLA's CPU backend splits into
  slow windowed reductions (about 3% of a train step without YNNPACK fusions)."""
  return y + bias


@_add_bias_as_matmul.defjvp
def _add_bias_as_matmul_jvp(primals, tangents):
  y, bias = primals
  dy, dbias = tangents
  ones = jnp.ones((y.shape[0], 1), dbias.dtype)
  return y + bias, dy + ones @ dbias[None, :]  # linear in dbias through a dot, so its transpose is one


def gelu(x):
  """Exact (erf) GELU, written as torch and Hugging Face write it.

  jax.nn.gelu(approximate=False) uses erfc, which XLA lowers to a two-branch polynomial that takes 2-3x
  longer on CPU than its erf; over [batch, seq, intermediate] that is a visible part of a layer.
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))


def take(w, heads, axis):
  """w restricted to `heads` along `axis`; no gather when that is every head in order."""
  if heads == list(range(w.shape[axis])):
    return w
  return jnp.take(w, jnp.asarray(heads, dtype=jnp.int32), axis=axis)
