"""Attention kernels, one signature for all.

Every kernel maps a group of heads to their context vectors:

  kernel(q, k, v, mask, constant, gate, dropout, return_probs) -> (context, probs | None)

  q, k:     [batch, seq, heads, head_dim] (None for constant heads: they compute no query or key)
  v:        [batch, seq, heads, head_dim]
  mask:     [batch, seq], 1 for real tokens, 0 for padding
  constant: [heads, L, L] with L >= seq (PAPA's averaged attention), or None
  gate:     [heads] logits; sigmoid(gate) is the weight of the input-dependent attention
  dropout:  callable on probabilities [batch, heads, seq, seq], or None (deterministic)
  context:  [batch, seq, heads, head_dim]
  probs:    [batch, heads, seq, seq] when return_probs, else None

The encoder layer splits its heads into groups by kind (EncoderConfig.head_kinds) and calls the
matching kernel once per group, so a layer can mix kinds freely.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Dropout = Callable[[jax.Array], jax.Array] | None


def _apply_probs(probs, v, dropout):
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum('bnqk,bknd->bqnd', probs.astype(v.dtype), v)


def softmax_probs(q, k, mask):
  """Scaled dot-product softmax over real keys, as Hugging Face BERT: [batch, heads, seq, seq]."""
  scores = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores + bias, axis=-1)


def constant_probs(constant, mask):
  """PAPA's constant attention for each example: [batch, heads, seq, seq].

  The [heads, L, L] matrix is cropped to the first `seq` positions, restricted to the example's real
  tokens (outer product of its mask) and each row renormalised to sum to 1. Rows with no mass (padded
  queries, or cells never observed) become 0.
  """
  seq = mask.shape[1]
  if constant.shape[-1] < seq:
    raise ValueError(
        f'Constant attention matrices cover {constant.shape[-1]} positions; the input has {seq}. '
        'Lay inputs out at the length the constants were estimated with.')
  m = mask.astype(jnp.float32)
  probs = constant[None, :, :seq, :seq].astype(jnp.float32) * m[:, None, :, None] * m[:, None, None, :]
  total = probs.sum(-1, keepdims=True)
  return jnp.where(total > 0, probs / jnp.where(total > 0, total, 1.0), 0.0)


def softmax_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False):
  """The usual input-dependent attention."""
  del constant, gate  # input-dependent heads use neither
  if dropout is None and not return_probs:
    # XLA's fused kernel: no [batch, heads, seq, seq] tensor is materialised in the layout einsum needs.
    context = jax.nn.dot_product_attention(q, k, v, mask=(mask[:, None, None, :] > 0))
    return context, None
  probs = softmax_probs(q, k, mask)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


def constant_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False):
  """A fixed matrix per head: no query, no key, no scores, no softmax."""
  del q, k, gate  # constant heads compute no query or key
  probs = constant_probs(constant, mask)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


def mixed_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False):
  """sigmoid(gate) * softmax + (1 - sigmoid(gate)) * constant, per head (PAPA's ranking run)."""
  weight = jax.nn.sigmoid(gate.astype(jnp.float32))[None, :, None, None]
  probs = weight * softmax_probs(q, k, mask) + (1.0 - weight) * constant_probs(constant, mask)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


KERNELS = {
    'softmax': softmax_attention,
    'constant': constant_attention,
    'mixed': mixed_attention,
}
