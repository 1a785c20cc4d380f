"""papa_jax: PAPA (Hassid et al., 2022) on the shared encoder: constant averaged attention and its probe.

  averages  masked running averages of attention over a dataset; save/load (.npz, no pickle)
  probe     frozen deterministic encoder + all-layer position-weighted head; cached features; training
  ranking   lambda-gated ranking run -> which heads to make constant
"""

from papa_jax import averages, probe, ranking
from papa_jax.averages import AttentionSums
from papa_jax.ranking import constant_heads, rank_heads, resolve_k

__all__ = ['averages', 'probe', 'ranking', 'AttentionSums', 'constant_heads', 'rank_heads', 'resolve_k']
