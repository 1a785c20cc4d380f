"""Relative position terms that architectures add to attention scores, computed once per forward pass.

MPNet: a bucketed bias table [buckets, heads], shared by all layers (T5's bucketing, bidirectional). The
buckets depend only on the sequence length, so they are numpy constants at trace time.
"""

from __future__ import annotations

import math

import numpy as np

from encoder_jax.config import MPNET_BUCKETS, MPNET_MAX_DISTANCE


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
