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

import jax
import jax.numpy as jnp

import encoder_jax

from machine import cpu_model, minilm_shaped, random_constants, random_inputs, time_alternately  # bench/ is on sys.path

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

  config = minilm_shaped()
  params = encoder_jax.init_params(config, jax.random.key(0))
  constant_config = config.with_heads('constant', 'all')
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; nproc {os.cpu_count()}; {cpu_model()}')
  print(f'MiniLM shape 6 x 384, 12 heads, batch {args.batch}, float32, {args.reps} reps, medians')

  ratios = []
  for seq in (int(s) for s in args.seqs.split(',')):
    ids, mask = random_inputs(args.batch, seq)
    types = jnp.zeros_like(ids)
    constants = random_constants(1, config, seq)
    softmax_fn = jax.jit(lambda p, i, m, t: encoder_jax.encode(config, p, i, m, t)[-1])
    constant_fn = jax.jit(lambda p, i, m, t, c: encoder_jax.encode(constant_config, p, i, m, t, constants=c)[-1])
    run = {'softmax': lambda: softmax_fn(params, ids, mask, types),
           'constant': lambda: constant_fn(params, ids, mask, types, constants)}
    med = time_alternately(run, args.reps)
    ratio = med['softmax'] / med['constant']
    ratios.append((seq, ratio))
    print(f'seq {seq}: softmax {med["softmax"] * 1e3:.1f} ms, constant {med["constant"] * 1e3:.1f} ms, '
          f'ratio {ratio:.3f}x (analytic {analytic_ratio(seq, 384, 1536):.3f}x)')
  print('ratio softmax/constant: ' + ', '.join(f'seq {s} {r:.2f}x' for s, r in ratios))


if __name__ == '__main__':
  main()
