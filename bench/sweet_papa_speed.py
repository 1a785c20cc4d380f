"""The first exit of SWEET with constant heads in its first segment, against none, side by side in one run.

  PYTHONPATH=. python bench/sweet_papa_speed.py [--reps 9] [--batch 8] [--seqs 512]

A MiniLM-shaped exit model (6 x 384, 12 heads, exits after layers 1, 2, 4, 6; random weights: speed does not
depend on the values), float32, jitted: the program an example leaving at the first exit runs (embeddings,
layer 1, the first exit's head), for the variants of experiments/sweet_papa_study.py: none, rank_q (3 of
layer 1's heads constant), rank_h (6), first_all (12). Which heads does not matter for speed. The programs are
timed alternately, rep by rep, so that noise from other processes hits all alike; medians are reported, with
the analytic FLOPs ratio (sweet_jax.curves) beside each measured one. Prints the measured speedups against
none as its last line.

Measured (2026-12-03, 2-core AMD EPYC shared with a study run, load ~6.7; `--seqs 64,512 --batch 8 --reps 9`,
57 s): first-exit speedup against none at seq 64: rank_q 1.03x, rank_h 1.13x, first_all 1.21x (FLOPs 1.05x,
1.10x, 1.21x); at seq 512: 1.14x, 1.35x, 1.90x (FLOPs 1.06x, 1.13x, 1.30x). At 512 the skipped softmax
(exponentials over [seq, seq] per head, memory-bound on a CPU) costs more time than its FLOPs share says.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

import encoder_jax
from sweet_jax import curves, exits

from machine import cpu_model, minilm_shaped, random_constants, random_inputs, time_alternately  # bench/ is on sys.path

VARIANTS = {'none': 0, 'rank_q': 3, 'rank_h': 6, 'first_all': 12}  # constant heads of layer 1


def first_exit_program(config, ecfg):
  """(params, ids, mask, constants) -> the first exit's logits: what an example leaving there runs."""
  def run(params, ids, mask, constants):
    hidden = encoder_jax.embed(config, params['encoder'], ids, mask, jnp.zeros_like(ids))
    return exits.segment_forward(config, ecfg, params, hidden, mask, 0, constants=constants)[1]
  return jax.jit(run)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reps', type=int, default=9)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seqs', default='512')
  args = parser.parse_args()

  config = minilm_shaped()
  ecfg = exits.ExitConfig((1, 2, 4, 6), 2, pooling='mean')
  params = exits.init_exit_model(jax.random.key(1), config, encoder_jax.init_params(config, jax.random.key(0)), ecfg)
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; nproc {os.cpu_count()}; {cpu_model()}')
  print(f'MiniLM shape, first exit (embeddings, layer 1, head), batch {args.batch}, float32, {args.reps} reps, medians')
  lines = []
  for seq in (int(s) for s in args.seqs.split(',')):
    ids, mask = random_inputs(args.batch, seq)
    constants = random_constants(2, config, seq)
    cfgs = {v: config.with_heads('constant', [(0, h) for h in range(k)]) for v, k in VARIANTS.items()}
    fns = {v: first_exit_program(c, ecfg) for v, c in cfgs.items()}
    run = {v: (lambda f=f: f(params, ids, mask, constants)) for v, f in fns.items()}
    med = time_alternately(run, args.reps)
    flops = {v: curves.exit_costs(c, ecfg, 'sweet', seq)[0] for v, c in cfgs.items()}
    for v in VARIANTS:
      print(f'seq {seq} {v:9s}: {med[v] * 1e3:7.1f} ms, speedup {med["none"] / med[v]:.3f}x '
            f'(FLOPs {flops["none"] / flops[v]:.3f}x)')
    lines.append(f'seq {seq}: ' + ', '.join(f'{v} {med["none"] / med[v]:.2f}x' for v in VARIANTS if v != 'none'))
  print('measured first-exit speedup against none: ' + '; '.join(lines))


if __name__ == '__main__':
  main()
