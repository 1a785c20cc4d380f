"""SWEET x PAPA (issue 25): constant heads in the early segments.

- The analytic FLOPs of a layer (sweet_jax.curves) equal the matrix products its forward really runs, counted
  from the dot_generals of the jaxpr (not from curves' formulas), for all-softmax, all-constant and mixed
  layers at two sequence lengths and in both kernel forms.
- The adaptive engine with constant heads answers every example as the offline sweep does.
- The study runner's grid and report (experiments/sweet_papa_study.py).
"""

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from sweet_jax import curves

# ------------------------------------------------------------------------------------ FLOPs = dot_generals

# Prime-ish sizes catch a transposed or dropped factor: head_dim 5, 7 heads, intermediate 29.
TINY = encoder_jax.EncoderConfig(vocab_size=31, hidden_size=35, num_layers=1, num_heads=7, intermediate_size=29,
                                 max_position_embeddings=40)
BATCH = 3


def dot_general_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr and its sub-jaxprs (pjit, custom_jvp, ...): for
  lhs [batch, lhs free, contracting] and rhs [batch, contracting, rhs free], 2 * |lhs| * |rhs free|.
  Control flow is refused: a branch (lax.platform_dependent under kernels='auto') would count twice."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    assert name not in ('cond', 'while', 'scan'), f'{name} in the layer: its branches would be miscounted'
    if name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      rhs_free = [s for j, s in enumerate(rhs) if j not in rhs_contract and j not in rhs_batch]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)
  for sub in jax.extend.core.subjaxprs(jaxpr):
    total += dot_general_flops(sub)
  return total


def one_layer_dot_flops(config, seq: int) -> int:
  """The matrix-product FLOPs per example of layer 0's inference forward on a batch of BATCH."""
  params = encoder_jax.init_params(config, jax.random.key(0))
  hidden = jnp.zeros((BATCH, seq, config.hidden_size))
  mask = jnp.ones((BATCH, seq), jnp.int32)
  constants = jnp.full((1, config.num_heads, seq, seq), 1.0 / seq)
  gates = jnp.zeros((1, config.num_heads))
  fn = lambda p, x, m, c, g: encoder_jax.run_layers(config, p, x, m, 0, 1, constants=c, gates=g)
  closed = jax.make_jaxpr(fn)(params, hidden, mask, constants, gates)
  total = dot_general_flops(closed.jaxpr)
  assert total % BATCH == 0
  return total // BATCH


def head_sets():
  """(name, kinds of the layer's heads): all softmax, all constant, seeded random mixes (one input-dependent
  head, one constant head, about half), and one with PAPA's gated 'mixed' heads too."""
  n = TINY.num_heads
  rng = np.random.default_rng(25)
  out = [('softmax', ('softmax',) * n), ('constant', ('constant',) * n)]
  for name, n_const in (('one_dynamic', n - 1), ('one_constant', 1), ('half', n // 2)):
    chosen = set(rng.choice(n, n_const, replace=False).tolist())
    out.append((name, tuple('constant' if h in chosen else 'softmax' for h in range(n))))
  out.append(('gated', tuple(rng.choice(['softmax', 'constant', 'mixed'], n).tolist())))
  return out


@pytest.mark.parametrize('kernels', ['cpu_tuned', 'portable'])
@pytest.mark.parametrize('name,kinds', head_sets())
def test_layer_flops_model_counts_the_matmuls_the_layer_runs(name, kinds, kernels):
  config = TINY.replace(head_kinds=(kinds,), kernels=kernels)
  for seq in (11, 17):
    assert curves.layer_matmul_flops(config, 0, seq) == one_layer_dot_flops(config, seq), (name, seq)


def test_constant_heads_save_their_query_key_and_score_flops():
  """What a constant head saves is what the model says: its Q and K columns, its scores and softmax; what it
  adds is its normaliser product and O(seq x head_dim) elementwise work. Independent of curves: from the
  dot_generals and the configuration's sizes."""
  seq, d, h = 13, TINY.head_dim, TINY.hidden_size
  softmax = TINY.replace(head_kinds=(('softmax',) * TINY.num_heads,), kernels='cpu_tuned')
  one = softmax.with_heads('constant', [(0, 3)])
  saved = one_layer_dot_flops(softmax, seq) - one_layer_dot_flops(one, seq)
  assert saved == 2 * seq * h * 2 * d + 2 * seq * seq * d - 2 * seq * seq  # Q, K columns; scores; + normaliser
  assert curves.layer_flops(softmax, 0, seq) - curves.layer_flops(one, 0, seq) == (
      saved + 2 * seq * d + curves.ELEMENTWISE_FLOPS * seq * (seq - d))  # and their biases and softmax
