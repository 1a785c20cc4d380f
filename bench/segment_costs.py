"""Where the adaptive engine's gap to the FLOPs ideal goes: each program it runs, timed against the full model.

  PYTHONPATH=. python bench/segment_costs.py [--batch 256] [--seq 64] [--reps 7]

A MiniLM-shaped SWEET model (6 x 384, 12 heads, exits after layers 1, 2, 4, 6; random weights: speed does not
depend on the values), float32, jitted, one batch: the embeddings alone, each segment call the engine makes on a
full batch (engine_programs.forward: segment 0 embeds, then every segment runs its layers and its exit's head),
and the full model (engine_programs.full), timed alternately rep by rep (medians). For each it prints the
share of the full model's time against its share of the full model's FLOPs (sweet_jax.curves). The FLOPs
ideal of bench/adaptive_speed.py is sum(FLOPs share) over the segments an example runs; where a program's time
share exceeds its FLOPs share, that excess is a fixed cost early exit cannot skip (the embedding lookups and
layer norm, which the FLOPs model counts as nearly free; each segment's head, pooling and hand-over of the
hidden state), and it weighs most at fast thresholds, where the first segment is most of the work. The last
line is the cap this would put on measured / ideal when every example leaves at the first exit, were the
engine's segment calls as fast as these standalone programs; inside the engine's chunk program they ran faster
(bench/RESULTS.md: 1.00 of the ideal at threshold 0.6, batch 256, against a cap of 0.964 printed here).
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp

import encoder_jax
from sweet_jax import curves, exits
from sweet_jax import engine_programs as programs

from machine import cpu_model, minilm_shaped, random_inputs, time_alternately  # bench/ is on sys.path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--seq', type=int, default=64)
  parser.add_argument('--reps', type=int, default=7)
  args = parser.parse_args()

  config = minilm_shaped()
  ecfg = exits.ExitConfig((1, 2, 4, 6), 2, pooling='mean')
  params = exits.init_exit_model(jax.random.key(1), config, encoder_jax.init_params(config, jax.random.key(0)), ecfg)
  spec = programs.Spec(config, ecfg, False, 2 * args.batch)
  ids, mask = random_inputs(args.batch, args.seq)
  payload = {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': jnp.zeros_like(ids)}
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; nproc {os.cpu_count()}; {cpu_model()}')
  print(f'MiniLM shape, SWEET exits {ecfg.exit_layers}, batch {args.batch}, seq {args.seq}, float32, '
        f'{args.reps} reps, medians')

  embed = jax.jit(lambda p, x: encoder_jax.embed(config, p['encoder'], x['input_ids'], x['attention_mask'],
                                                 x['token_type_ids']))
  segment = jax.jit(functools.partial(programs.forward, spec), static_argnums=0)
  inputs = [payload]  # each segment's input: the previous segment's output payload
  for i in range(ecfg.num_exits - 1):
    inputs.append(jax.block_until_ready(segment(i, params, None, inputs[-1])[0]))
  run = {'full model': lambda: programs.full(spec, params, None, payload), 'embeddings': lambda: embed(params, payload),
         **{f'segment {i}': (lambda i=i: segment(i, params, None, inputs[i])) for i in range(ecfg.num_exits)}}
  med = time_alternately(run, args.reps)

  costs = curves.exit_costs(config, ecfg, 'sweet', args.seq)  # cumulative FLOPs of leaving at exit i
  full_flops = curves.full_model_flops(config, ecfg, args.seq)
  flops = {'full model': full_flops, 'embeddings': curves.embedding_flops(config, args.seq),
           **{f'segment {i}': costs[i] - (costs[i - 1] if i else 0) for i in range(ecfg.num_exits)}}
  for name, t in med.items():
    time_share, flops_share = t / med['full model'], flops[name] / full_flops
    print(f'{name:11s}: {t * 1e3:8.1f} ms, time share {time_share:.3f}, FLOPs share {flops_share:.3f}, '
          f'time/FLOPs {time_share / flops_share:.2f}')
  cap = (flops['segment 0'] / full_flops) / (med['segment 0'] / med['full model'])
  print(f'measured/ideal when every example leaves at the first exit: at most {cap:.3f} '
        f'(the embeddings alone: {med["embeddings"] / med["full model"]:.3f} of the full model\'s time)')


if __name__ == '__main__':
  main()
