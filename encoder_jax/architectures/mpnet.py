"""MPNet: RoBERTa's positions, no token types, and a bucketed relative position bias [buckets, heads] that
every layer adds to its attention scores (T5's bucketing, bidirectional), one table shared by all layers.

Buckets depend only on the sequence length, so they are numpy constants at trace time.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from encoder_jax import blocks, tuning
from encoder_jax.architectures.roberta import Roberta
from encoder_jax.config import MPNET_BUCKETS, MPNET_MAX_DISTANCE, EncoderConfig


class MPNet(Roberta):
  HF_LAYER_NAMES = {
      **Roberta.HF_LAYER_NAMES, 'query': r'attention\.attn\.q', 'key': r'attention\.attn\.k',
      'value': r'attention\.attn\.v', 'attention_output': r'attention\.attn\.o',
      'attention_layer_norm': r'attention\.LayerNorm',
  }
  HF_EXTRA_NAMES = ((r'encoder\.relative_attention_bias\.weight', 'relative/embedding', 'id'),)
  """RoBERTa's position ids; the shared bias, at the layer's heads, as the score term."""

  def parameter_shapes(self, config):
    return {'relative/embedding': (config.relative_attention_num_buckets, config.num_heads)}  # RelativeBias

  def shared(self, config):
    return RelativeBias(config)

  def score_terms(self, config, q, k, position, heads, query, key, deterministic):
    del config, k, query, key, deterministic  # the bias depends on positions alone
    return q, blocks.take(position, heads, 0)


FAMILY = MPNet()


class RelativeBias(nn.Module):
  """MPNet's relative attention bias: one table [buckets, heads] that every layer adds to its scores."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, seq):
    """-> float32 [heads, seq, seq], the score term of every head."""
    table = self.param('embedding', blocks.init,
                       (self.config.relative_attention_num_buckets, self.config.num_heads))
    buckets = bucket_matrix(seq)  # static: depends only on the length
    return tuning.pick(self.config.kernels, functools.partial(bias_one_hot, buckets=buckets),
                       functools.partial(bias_gathered, buckets=buckets), table)


def bias_one_hot(table, buckets):
  """table [buckets, heads] at bucket ids [seq, seq] -> float32 [heads, seq, seq], as a one-hot matmul.

  The CPU-tuned form. XLA gathers rows into [seq, seq, heads] and fused the transpose to [heads, seq, seq]
  into every layer's softmax, which then read the bias at a stride of `heads` floats; a dot's result is
  materialised in the layout asked for, and its gradient is a matmul, not a scatter-add.
  """
  seq = buckets.shape[0]
  one_hot = jnp.asarray(buckets.reshape(-1))[None, :] == jnp.arange(table.shape[0])[:, None]
  bias = jnp.einsum('kn,kx->nx', table, one_hot.astype(table.dtype), preferred_element_type=jnp.float32)
  return bias.reshape(-1, seq, seq)


def bias_gathered(table, buckets):
  """The portable form of bias_one_hot: a gather of rows, then [seq, seq, heads] -> [heads, seq, seq]."""
  return jnp.take(table, jnp.asarray(buckets), axis=0).astype(jnp.float32).transpose(2, 0, 1)


def buckets_of(relative: np.ndarray, num_buckets: int = MPNET_BUCKETS,
               max_distance: int = MPNET_MAX_DISTANCE) -> np.ndarray:
  """Hugging Face's MPNetEncoder.relative_position_bucket: relative = key - query positions -> bucket ids.

  Half the buckets for keys before the query, half after; within each half, exact distances below
  num_buckets / 4 and logarithmic ones up to max_distance (the last bucket takes everything beyond).
  The logarithm is taken in float32, as torch does, so bucket boundaries agree exactly.
  """
  n = -np.asarray(relative, np.int64)
  half = num_buckets // 2
  ret = (n < 0).astype(np.int64) * half
  n = np.abs(n)
  max_exact = half // 2
  with np.errstate(divide='ignore'):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
              * np.float32(half - max_exact))
  large = max_exact + np.where(n < max_exact, 0, scaled).astype(np.int64)  # small n never uses this branch
  large = np.minimum(large, half - 1)
  return ret + np.where(n < max_exact, n, large)


def bucket_matrix(seq: int) -> np.ndarray:
  """Bucket id of every (query, key) pair of a sequence: int32 [seq, seq]."""
  positions = np.arange(seq)
  return buckets_of(positions[None, :] - positions[:, None]).astype(np.int32)
