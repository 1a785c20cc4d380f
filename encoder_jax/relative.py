"""Relative position terms that architectures add to attention scores, computed once per forward pass.

MPNet: a bucketed bias table [buckets, heads], shared by all layers (T5's bucketing, bidirectional).
DeBERTa: relative embeddings [2k, H] shared by all layers; each layer projects them with its own (or its
query/key) weights and adds content-to-position and position-to-content scores (disentangled_scores).
Buckets and gather indices depend only on the sequence length, so they are numpy constants at trace time.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax.config import MPNET_BUCKETS, MPNET_MAX_DISTANCE, EncoderConfig

_init = nn.initializers.normal(stddev=0.02)  # BERT's initialisation, as model.py


class MPNetRelativeBias(nn.Module):
  """MPNet's relative attention bias: one table [buckets, heads] that every layer adds to its scores."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, seq):
    """-> float32 [heads, seq, seq], the score term of every head."""
    table = self.param('embedding', _init, (self.config.relative_attention_num_buckets, self.config.num_heads))
    buckets = mpnet_bucket_matrix(seq)  # static: depends only on the length
    # A one-hot matmul, not a gather: XLA gathers rows into [seq, seq, heads] and fused the transpose to
    # [heads, seq, seq] into every layer's softmax, which then read the bias at a stride of `heads` floats.
    # A dot's result is materialised in the layout asked for; its gradient is a matmul, not a scatter-add.
    one_hot = jnp.asarray(buckets.reshape(-1))[None, :] == jnp.arange(table.shape[0])[:, None]
    bias = jnp.einsum('kn,kx->nx', table, one_hot.astype(table.dtype), preferred_element_type=jnp.float32)
    return bias.reshape(-1, seq, seq)


class DebertaRelativeEmbeddings(nn.Module):
  """DeBERTa's relative position embeddings [2k, H] (and, in v2, their layer norm), shared by all layers."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, seq):
    """-> [2k, H] float32; `seq` is unused (the layers pick rows by relative distance)."""
    del seq  # every layer reads the whole table through its gather indices
    cfg = self.config
    table = self.param('embedding', _init, (2 * cfg.attention_span, cfg.hidden_size))
    if cfg.norm_rel_ebd:
      table = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name='layer_norm')(table)
    return table


def mpnet_buckets(relative: np.ndarray, num_buckets: int = MPNET_BUCKETS,
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


def mpnet_bucket_matrix(seq: int) -> np.ndarray:
  """Bucket id of every (query, key) pair of a sequence: int32 [seq, seq]."""
  positions = np.arange(seq)
  return mpnet_buckets(positions[None, :] - positions[:, None]).astype(np.int32)


def deberta_log_buckets(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """Hugging Face's make_log_bucket_position (DeBERTa v2): exact within +-bucket_size/2, logarithmic beyond,
  in float32 as torch computes it."""
  relative = np.asarray(relative, np.int64)
  sign = np.sign(relative)
  mid = bucket_size // 2
  abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
  log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid))
                    / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, relative, log_pos * sign).astype(np.int64)


def deberta_rows(config: EncoderConfig, seq: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the relative table each distance reads: (c2p, p2c), int32 [2 seq - 1], entry m for distance
  delta = m - (seq - 1).

  relative(delta) = bucket(delta) (v2's log buckets when position_buckets > 0). c2p reads row
  clip(relative(i - j) + k) for query i, key j; p2c reads clip(-relative(j - i) + k) for key j, query i.
  Both depend on the distance alone, so one row per distance serves every (i, j) pair. DeBERTa v1 slices its
  table to the sequence's span first; indexing the whole table as here is the same lookup.
  """
  rel = np.arange(-(seq - 1), seq)
  if config.position_buckets > 0:
    rel = deberta_log_buckets(rel, config.position_buckets, config.max_relative_positions
                              if config.max_relative_positions > 0 else config.max_position_embeddings)
  k = config.attention_span
  return np.clip(rel + k, 0, 2 * k - 1).astype(np.int32), np.clip(-rel + k, 0, 2 * k - 1).astype(np.int32)


def _by_distance(x):
  """x [..., S, 2S - 1] indexed by (row a, distance a - b + S - 1) -> [..., S, S] indexed by (a, b).

  The Transformer-XL relative shift: reversed, flattened rows read consecutively at a stride of 2S - 2
  (element a (2S - 1) + (S - 1 - a) + b of the reversed rows is x[a, a - b + S - 1]). A reshape and a slice
  instead of a [batch, heads, S, S] gather, whose gradient (a scatter-add of that size) dominated training.
  """
  s = x.shape[-2]
  if s == 1:
    return x
  flat = jnp.flip(x, -1).reshape(x.shape[:-2] + (s * (2 * s - 1),))
  return flat[..., s - 1:s - 1 + s * (2 * s - 2)].reshape(x.shape[:-2] + (s, 2 * s - 2))[..., :s]


def disentangled_scores(config: EncoderConfig, q, k, pos_query, pos_key):
  """DeBERTa's relative score term, float32 [batch, heads, seq, seq], for the heads given.

  q, k: [batch, seq, heads, d] (unscaled); pos_query, pos_key: [2k, heads, d], the relative embeddings
  projected by the layer (None when the term is off). Each term is divided by sqrt(d * (1 + terms)), as the
  content score is. Scores are computed per distance (2 seq - 1 table rows, gathered once per layer from
  the parameters) and shifted into place (_by_distance).

  One head at a time (lax.map), so that the term is materialised once per head. Batched over heads, XLA
  fused the shift and p2c's transpose into both passes of the softmax (row maximum, then exponential),
  each reading the per-distance scores at a stride of ~2 seq floats. On CPU the loop makes DeBERTa-v3's
  forward pass ~17% faster and the term's own gradient ~45% (bench/RESULTS.md, bench/deberta_scores.py).
  """
  batch, seq, _, d = q.shape
  scale = 1.0 / np.sqrt(d * (1 + len(config.pos_att_type)))
  c2p_rows, p2c_rows = deberta_rows(config, seq)
  terms = {}  # name -> (q or k [heads, batch, seq, d], table rows by distance [heads, 2 seq - 1, d])
  if 'c2p' in config.pos_att_type:  # query i, distance i - j
    terms['c2p'] = (q.transpose(2, 0, 1, 3), pos_key[c2p_rows].transpose(1, 0, 2))
  if 'p2c' in config.pos_att_type:  # key j, distance j - i; then transposed to [query, key]
    terms['p2c'] = (k.transpose(2, 0, 1, 3), pos_query[p2c_rows].transpose(1, 0, 2))
  if not terms:
    return 0.0

  def one_head(head_terms):
    score = 0.0
    for name, (x, table) in head_terms.items():
      by_distance = jnp.einsum('xd,md->xm', x.reshape(batch * seq, d), table, preferred_element_type=jnp.float32)
      shifted = _by_distance(by_distance.reshape(batch, seq, 2 * seq - 1))
      score = score + (shifted if name == 'c2p' else jnp.swapaxes(shifted, -1, -2))
    return score * scale  # [batch, seq, seq]

  return jax.lax.map(one_head, terms).transpose(1, 0, 2, 3)
