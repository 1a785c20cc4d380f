"""Attention kernels, one signature for all.

Every kernel maps a group of heads to their context vectors:

  kernel(q, k, v, mask, constant, gate, dropout, return_probs, bias, kernels) -> (context, probs | None)

  q, k:     [batch, seq, heads, head_dim] (None for constant heads: they compute no query or key)
  v:        [batch, seq, heads, head_dim]
  mask:     [batch, seq], 1 for real tokens, 0 for padding
  constant: [heads, L, L] with L == seq (PAPA's averaged attention), or None
  gate:     [heads] logits; sigmoid(gate) is the weight of the input-dependent attention
  dropout:  callable on probabilities [batch, heads, seq, seq], or None (deterministic)
  context:  [batch, seq, heads, head_dim]
  probs:    [batch, heads, seq, seq] when return_probs, else None
  bias:     an additive score term, float32 [heads, seq, seq] or [batch, heads, seq, seq], or None: how an
            architecture's relative positions enter (MPNet's bucketed bias). Constant heads ignore it: they
            replace the whole probability matrix, whatever would have formed the scores.
  kernels:  EncoderConfig.kernels, the form of softmax attention when neither probabilities nor dropout are
            asked for: 'cpu_tuned' (normalised after the value matmul), 'portable'
            (jax.nn.dot_product_attention, XLA's implementation) or 'auto' (tuning.pick).

The encoder layer splits its heads into groups by kind (EncoderConfig.head_kinds) and calls the
matching kernel once per group, so a layer can mix kinds freely.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from encoder_jax import tuning

Dropout = Callable[[jax.Array], jax.Array] | None


def _heads_major(x):
  """[batch, seq, heads, d] -> [batch, heads, seq, d]: the layout whose batched matmuls XLA runs without
  further copies (batch dimensions leading, contraction over the last one)."""
  return x.transpose(0, 2, 1, 3)


def _apply_probs(probs, v, dropout):
  """probs [batch, heads, q, k] (rows sum to 1), v [batch, k, heads, d] -> context [batch, q, heads, d]."""
  if dropout is not None:
    probs = dropout(probs)
  context = jnp.einsum('bnqk,bnkd->bnqd', probs.astype(v.dtype), _heads_major(v),
                       preferred_element_type=jnp.float32)
  return _heads_major(context).astype(v.dtype)


def _scores(q, k, mask, bias=None):
  """Scaled scores of real keys (+ bias), float32 [batch, heads, q, k]; padded keys get the most negative float.

  The scale is applied to q ([b, s, n, d]), not to the 16x larger scores, and the mask is an additive bias:
  XLA then fuses bias, row maximum and exponential into the epilogue of the score matmul (a `where` on the
  broadcast mask blocks that fusion and doubles the time of the forward attention on CPU).
  """
  scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  scores = jnp.einsum('bnqd,bnkd->bnqk', _heads_major(q * scale), _heads_major(k),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + bias  # [heads | batch, heads, q, k]: broadcasts against [batch, heads, q, k]
  key_mask = jnp.where(mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
  return scores + key_mask[:, None, None, :]


def _unnormalized(q, k, mask, bias=None):
  """exp(scores - row max) [batch, heads, q, k] and its row sums [batch, heads, q, 1].

  The max is a constant shift of each row (softmax does not depend on it), so no gradient flows through it;
  differentiating the max would cost an extra pass over the scores for a term that cancels exactly.
  """
  scores = _scores(q, k, mask, bias)
  e = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
  return e, e.sum(-1, keepdims=True)


def softmax_probs(q, k, mask, bias=None):
  """Scaled dot-product softmax over real keys, as Hugging Face BERT: [batch, heads, seq, seq]."""
  e, total = _unnormalized(q, k, mask, bias)
  return e / total


def _layout_length(constant, seq):
  """The [heads, L, L] matrices themselves, or an error when the input's length is not L.

  A slot of PAPA's fixed layout means the same thing in every example only at the length the constants
  were estimated at: the final [SEP] sits at L-1, so any other length misaligns every slot. Shapes are
  static under jit, so this raises at trace time.
  """
  if constant.shape[-1] != seq:
    raise ValueError(
        f'Constant attention matrices cover a layout of length L={constant.shape[-1]}; the input has length '
        f'{seq}. Lay inputs out at length L (encoder_jax.papa_layout), the length the constants were '
        'estimated at.')
  return constant


def constant_probs(constant, mask):
  """PAPA's constant attention for each example: [batch, heads, seq, seq].

  The [heads, L, L] matrix (L must equal seq) is restricted to the example's real tokens (outer product
  of its mask) and each row renormalised to sum to 1. Rows with no mass (padded
  queries, or cells never observed) become 0.
  """
  seq = mask.shape[1]
  m = mask.astype(jnp.float32)
  probs = _layout_length(constant, seq)[None].astype(jnp.float32) * m[:, None, :, None] * m[:, None, None, :]
  total = probs.sum(-1, keepdims=True)
  return jnp.where(total > 0, probs / jnp.where(total > 0, total, 1.0), 0.0)


def _normalised_after(q, k, v, mask, bias):
  """Softmax attention's context [batch, seq, heads, d], the CPU-tuned form: normalise after the value
  matmul. Dividing the [b, heads, q, d] context by the row sums is 4x (seq / head_dim) cheaper than dividing
  the [b, heads, q, k] probabilities, and saves a pass over them."""
  e, total = _unnormalized(q, k, mask, bias)
  context = jnp.einsum('bnqk,bnkd->bnqd', e.astype(v.dtype), _heads_major(v), preferred_element_type=jnp.float32)
  return _heads_major(context / total).astype(v.dtype)


def _dot_product_attention(q, k, v, mask, bias):
  """The portable form of _normalised_after: jax.nn.dot_product_attention, XLA's implementation (cuDNN's
  takes no [heads, q, k] bias without a batch axis and no float32 inputs), the key mask as a boolean mask.
  Fully padded rows attend uniformly to every key in both forms."""
  if bias is not None and bias.ndim == 3:  # [heads, q, k] -> [1, heads, q, k]: the function wants 4-D
    bias = bias[None]
  keys = (mask > 0)[:, None, None, :]  # [batch, 1, 1, k]
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=keys, implementation='xla')


def softmax_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False, bias=None,
                      kernels='auto'):
  """The usual input-dependent attention."""
  del constant, gate  # input-dependent heads use neither
  if dropout is None and not return_probs:
    return tuning.pick(kernels, _normalised_after, _dot_product_attention, q, k, v, mask, bias), None
  probs = softmax_probs(q, k, mask, bias)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


def _constant_context(constant, mask, v):
  """constant_probs(constant, mask) applied to v, without forming the [batch, heads, seq, seq] tensor.

  The restricted, renormalised matrix of example b is C[q, k] m_k m_q / sum_k' C[q, k'] m_k', so
  context[b, q] = m_q (C @ (m * v_b))[q] / (C @ m)[q]: one [seq, seq] x [seq, batch * head_dim] matmul per
  head, shared by the whole batch, and a [batch, seq, heads] normaliser. Same arithmetic as the
  probabilities path up to summation order.
  """
  seq = mask.shape[1]
  c = _layout_length(constant, seq).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  numerator = jnp.einsum('nqk,bknd->bqnd', c.astype(v.dtype), v * m[:, :, None, None].astype(v.dtype),
                         preferred_element_type=jnp.float32)
  total = jnp.einsum('nqk,bk->bqn', c, m)
  scale = jnp.where(total > 0, m[:, :, None] / jnp.where(total > 0, total, 1.0), 0.0)
  return (numerator * scale[..., None]).astype(v.dtype)


def constant_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False, bias=None,
                       kernels='auto'):
  """A fixed matrix per head: no query, no key, no scores, no softmax."""
  del q, k, gate, bias, kernels  # constant heads compute no query or key, and so no score term either
  if dropout is None and not return_probs:
    return _constant_context(constant, mask, v), None
  probs = constant_probs(constant, mask)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


def mixed_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False, bias=None,
                    kernels='auto'):
  """sigmoid(gate) * softmax + (1 - sigmoid(gate)) * constant, per head (PAPA's ranking run)."""
  weight = jax.nn.sigmoid(gate.astype(jnp.float32))
  if dropout is None and not return_probs:
    # Attention is linear in its probabilities, so the mix of contexts is the context of the mix.
    w = weight[None, None, :, None]
    dynamic, _ = softmax_attention(q, k, v, mask, bias=bias, kernels=kernels)
    mixed = w * dynamic.astype(jnp.float32) + (1.0 - w) * _constant_context(constant, mask, v).astype(jnp.float32)
    return mixed.astype(v.dtype), None
  weight = weight[None, :, None, None]
  probs = weight * softmax_probs(q, k, mask, bias) + (1.0 - weight) * constant_probs(constant, mask)
  return _apply_probs(probs, v, dropout), (probs if return_probs else None)


KERNELS = {
    'softmax': softmax_attention,
    'constant': constant_attention,
    'mixed': mixed_attention,
}
