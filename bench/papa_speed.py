"""Forward pass with every head constant (PAPA) against every head softmax, side by side in one run.

  PYTHONPATH=. python bench/papa_speed.py [--reps 15] [--batch 32] [--seqs 64,128]

A MiniLM-shaped encoder (6 layers x 384, 12 heads, random weights: speed does not depend on the values),
batch 32, float32, jitted, at seq 64 and 128. The two programs are timed alternately, rep by rep, so that
noise from other processes on the machine hits both alike; medians are reported. A constant head computes
no query, key, scores or softmax (analytically about 1/6 of a layer's multiply-adds at these lengths, so a
~1.2x ceiling); the encoder's constant kernel never forms a per-example [batch, heads, seq, seq] matrix
(encoder_jax.attention._constant_context). Prints the ratios (softmax time / constant time) as its last line.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import encoder_jax

from machine import cpu_model  # bench/ is on sys.path when a script here runs

def analytic_ratio(seq: int, hidden: int, intermediate: int) -> float:
  """Multiply-adds of a softmax layer over a constant one (per example)."""
  proj = 4 * seq * hidden * hidden  # q, k, v, output
  ffn = 2 * seq * hidden * intermediate
  scores, mix = seq * seq * hidden, seq * seq * hidden
  softmax_layer = proj + ffn + scores + mix
  constant_layer = proj - 2 * seq * hidden * hidden + ffn + mix
  return softmax_layer / constant_layer


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
    run = {'softmax': lambda: softmax_fn(params, ids, mask, types),
           'constant': lambda: constant_fn(params, ids, mask, types, constants)}
    times = {name: [] for name in run}
    for fn in run.values():
      jax.block_until_ready(fn())  # compile
      jax.block_until_ready(fn())
    for _ in range(args.reps):
      for name, fn in run.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    ratio = med['softmax'] / med['constant']
    ratios.append((seq, ratio))
    print(f'seq {seq}: softmax {med["softmax"] * 1e3:.1f} ms, constant {med["constant"] * 1e3:.1f} ms, '
          f'ratio {ratio:.3f}x (analytic {analytic_ratio(seq, 384, 1536):.3f}x)')
  print('ratio softmax/constant: ' + ', '.join(f'seq {s} {r:.2f}x' for s, r in ratios))


if __name__ == '__main__':
  main()
