"""Forward pass with every head constant (PAPA) against every head softmax, side by side in one run.

  PYTHONPATH=. python bench/papa_speed.py [--reps 15] [--batch 32] [--seqs 64,128]

A MiniLM-shaped encoder (6 layers x 384, 12 heads, random weights: speed does not depend on the values),
batch 32, float32, jitted, at seq 64 and 128. The two programs are timed alternately, rep by rep, so that
noise from other processes on the machine hits both alike; medians are reported. A constant head computes
no query, key, scores or softmax (analytically about 1/6 of a layer's multiply-adds at these lengths, so a
~1.2x ceiling). A third program times a proposed constant kernel (factored_constant_attention, defined
here, not in the encoder) that never forms the [batch, heads, seq, seq] matrix. Prints the ratios
(softmax time / the encoder's constant time) as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax
from encoder_jax import attention


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown'


def analytic_ratio(seq: int, hidden: int, intermediate: int) -> float:
  """Multiply-adds of a softmax layer over a constant one (per example)."""
  proj = 4 * seq * hidden * hidden  # q, k, v, output
  ffn = 2 * seq * hidden * intermediate
  scores, mix = seq * seq * hidden, seq * seq * hidden
  softmax_layer = proj + ffn + scores + mix
  constant_layer = proj - 2 * seq * hidden * hidden + ffn + mix
  return softmax_layer / constant_layer


def factored_constant_attention(q, k, v, mask, constant=None, gate=None, dropout=None, return_probs=False):
  """A proposed constant kernel that never forms the [batch, heads, seq, seq] matrix (prototype, here only).

  The masked, row-renormalised matrix of an example is diag(m / (C m)) C diag(m), so its product with V is
  (C @ (m * V)) scaled per row by m_q / (C m)_q: one [heads, seq, seq] x [batch, seq, heads, d] product and
  a [batch, heads, seq] row sum, instead of masking, summing and dividing a [batch, heads, seq, seq] tensor.
  Falls back to the encoder's kernel when probabilities are needed (dropout, return_probs).
  """
  if dropout is not None or return_probs:
    return attention.constant_attention(q, k, v, mask, constant, gate, dropout, return_probs)
  seq = mask.shape[1]
  c = constant[:, :seq, :seq].astype(jnp.float32)
  m = mask.astype(jnp.float32)
  total = jnp.einsum('nqk,bk->bqn', c, m)  # each row's mass on the example's real keys
  scale = jnp.where(total > 0, m[:, :, None] / jnp.where(total > 0, total, 1.0), 0.0)  # [batch, seq, heads]
  context = jnp.einsum('nqk,bknd->bqnd', c.astype(v.dtype), v * m[:, :, None, None].astype(v.dtype))
  return context * scale[..., None].astype(v.dtype), None


@contextlib.contextmanager
def constant_kernel(fn):
  """Traces with `fn` as the encoder's 'constant' kernel (the layer looks kernels up at trace time)."""
  saved = attention.KERNELS['constant']
  attention.KERNELS['constant'] = fn
  try:
    yield
  finally:
    attention.KERNELS['constant'] = saved


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reps', type=int, default=15)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--seqs', default='64,128')
  args = parser.parse_args()

  config = encoder_jax.EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                                     intermediate_size=1536)
  params = encoder_jax.init_params(config, jax.random.key(0))
  constant_config = config.with_heads('constant', 'all')
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; nproc {os.cpu_count()}; {cpu_model()}')
  print(f'MiniLM shape 6 x 384, 12 heads, batch {args.batch}, float32, {args.reps} reps, medians')

  ratios = []
  for seq in (int(s) for s in args.seqs.split(',')):
    rng = np.random.default_rng(seq)
    ids = jnp.asarray(rng.integers(1000, 30000, (args.batch, seq)), jnp.int32)
    lengths = rng.integers(seq // 4, seq + 1, args.batch)
    mask = jnp.asarray(np.arange(seq)[None] < lengths[:, None], jnp.int32)
    types = jnp.zeros_like(ids)
    # Row-stochastic random constants, as an estimate would give (values do not affect speed).
    constants = jax.nn.softmax(jax.random.normal(jax.random.key(1), (6, 12, seq, seq)), axis=-1)

    softmax_fn = jax.jit(lambda p, i, m, t: encoder_jax.encode(config, p, i, m, t)[-1])
    constant_fn = jax.jit(lambda p, i, m, t, c: encoder_jax.encode(constant_config, p, i, m, t, constants=c)[-1])
    factored_fn = jax.jit(lambda p, i, m, t, c: encoder_jax.encode(constant_config, p, i, m, t, constants=c)[-1])
    run = {'softmax': lambda: softmax_fn(params, ids, mask, types),
           'constant': lambda: constant_fn(params, ids, mask, types, constants),
           'factored': lambda: factored_fn(params, ids, mask, types, constants)}
    times = {name: [] for name in run}
    for name, fn in run.items():
      with constant_kernel(factored_constant_attention if name == 'factored' else attention.constant_attention):
        jax.block_until_ready(fn())  # compile (the kernel is chosen while tracing)
      jax.block_until_ready(fn())
    np.testing.assert_allclose(run['factored'](), run['constant'](), rtol=2e-3, atol=2e-3)
    for _ in range(args.reps):
      for name, fn in run.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    ratio = med['softmax'] / med['constant']
    ratios.append((seq, ratio))
    print(f'seq {seq}: softmax {med["softmax"] * 1e3:.1f} ms, constant {med["constant"] * 1e3:.1f} ms, '
          f'ratio {ratio:.3f}x (analytic {analytic_ratio(seq, 384, 1536):.3f}x); proposed factored constant '
          f'kernel {med["factored"] * 1e3:.1f} ms, ratio {med["softmax"] / med["factored"]:.3f}x')
  print('ratio softmax/constant: ' + ', '.join(f'seq {s} {r:.2f}x' for s, r in ratios))


if __name__ == '__main__':
  main()
