"""DeBERTa's relative score term in three formulations, alone and inside the encoder, in one run.

  PYTHONPATH=. python bench/deberta_scores.py                 # the term alone, 15 repetitions
  PYTHONPATH=. python bench/deberta_scores.py --in_model 9    # also the whole encoder, 9 repetitions

per_head: encoder_jax.architectures.deberta.scores_per_head, the CPU-tuned form (EncoderConfig.kernels
          'cpu_tuned'): scores per distance, one head at a time (lax.map), moved into place by the
          Transformer-XL relative shift.
batched:  deberta.scores_batched, the portable form ('portable'): the same arithmetic for all heads in one
          einsum (the library's only form until 2026-12-02).
gathered: the projected table's rows gathered per (query, key) pair into [seq, seq, heads, d] (independent of
          the batch), then contracted against q and k directly; its gradient is a scatter-add of that size.
Alone: forward, and forward plus gradient, of the term of one layer. In the model (--in_model): the jitted
forward and train step of bench/encoder_speed.py's deberta-v3 encoder (6 x 384, 12 heads) with each library
form chosen by EncoderConfig.kernels, and BERT of the same shape as the reference. The formulations differ
most in the model, where XLA fuses the term's shift into the softmax that consumes it.
Shape: batch 32, seq 128, 12 heads of 32, DeBERTa-v3's 256 log buckets. All must agree (printed: the largest
differences of values and of gradients); they alternate in every repetition, so all see the same background
load. The results that decided the forms are in bench/RESULTS.md.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import EncoderConfig
from encoder_jax.architectures import deberta

CFG = EncoderConfig(model_type='deberta-v2', vocab_size=100, hidden_size=384, num_layers=6, num_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                    position_buckets=256, max_relative_positions=512, pos_att_type=('p2c', 'c2p'),
                    share_att_key=True, norm_rel_ebd=True, position_biased_input=False)
BATCH, SEQ = 32, 128


def library(form):
  """deberta.disentangled_scores with the kernel form fixed."""
  return lambda config, *args: deberta.disentangled_scores(config.replace(kernels=form), *args)


def gathered(config, q, k, pos_query, pos_key):
  """deberta.disentangled_scores from rows gathered per (query i, key j)."""
  seq, d = q.shape[1], q.shape[-1]
  c2p_rows, p2c_rows = deberta.rows(config, seq)
  i = np.arange(seq)
  c2p = c2p_rows[i[:, None] - i[None, :] + seq - 1]  # [i, j]: row of distance i - j
  p2c = p2c_rows[i[None, :] - i[:, None] + seq - 1]  # [i, j]: row of distance j - i
  s = jnp.einsum('bind,ijnd->bnij', q, pos_key[c2p], preferred_element_type=jnp.float32)
  s = s + jnp.einsum('bjnd,ijnd->bnij', k, pos_query[p2c], preferred_element_type=jnp.float32)
  return s / np.sqrt(d * deberta.score_scale(config))


FORMS = {'per_head': library('cpu_tuned'), 'batched': library('portable'), 'gathered': gathered}
IN_MODEL = {'per_head': 'cpu_tuned', 'batched': 'portable'}  # the library's forms, by EncoderConfig.kernels


def time_alternating(runs: dict, reps: int) -> dict:
  """name -> list of seconds; every repetition calls each run once, in turn."""
  times = {name: [] for name in runs}
  for _ in range(reps):
    for name, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def print_times(times: dict) -> None:
  for name, t in times.items():
    print(f'{name:30s} median {1e3 * np.median(t):7.1f} ms   min {1e3 * np.min(t):7.1f} ms')


def alone(reps: int) -> dict:
  n, d = CFG.num_heads, CFG.head_dim
  keys = jax.random.split(jax.random.key(0), 4)
  args = (jax.random.normal(keys[0], (BATCH, SEQ, n, d)), jax.random.normal(keys[1], (BATCH, SEQ, n, d)),
          jax.random.normal(keys[2], (2 * CFG.attention_span, n, d)),
          jax.random.normal(keys[3], (2 * CFG.attention_span, n, d)))
  fns = {}
  for name, f in FORMS.items():
    fns[f'{name} forward'] = jax.jit(lambda *a, f=f: f(CFG, *a))
    fns[f'{name} forward+grad'] = jax.jit(jax.grad(lambda *a, f=f: (f(CFG, *a) ** 2).sum(), argnums=(0, 1, 2, 3)))
  value = {name: fn(*args) for name, fn in fns.items()}
  for name in FORMS:
    print(f'{name}: values differ from per_head by at most',
          float(jnp.abs(value[f'{name} forward'] - value['per_head forward']).max()),
          '; gradients (relative)', max(float(jnp.abs(a - b).max() / jnp.abs(a).max())
                                       for a, b in zip(value['per_head forward+grad'], value[f'{name} forward+grad'])))
  times = time_alternating({n: lambda fn=fn: jax.block_until_ready(fn(*args)) for n, fn in fns.items()}, reps)
  print_times(times)
  return times


def in_model(reps: int) -> dict:
  """The encoder's forward and train step with each library form (EncoderConfig.kernels)."""
  out = {}
  sys.path.insert(0, 'bench')
  import encoder_speed as es  # pylint: disable=import-outside-toplevel
  args = es.parse_args([])  # its defaults: batch 32, float32, library XLA options
  sides = {'bert': es.JaxSide(args, 'bert', 'cpu_tuned')}
  for name, form in IN_MODEL.items():
    sides[f'deberta-v3 {name}'] = es.JaxSide(args, 'deberta-v3', form)
  batch = jax.device_put(es.make_batch(args, SEQ))
  for task in ('forward', 'train'):
    runs = {}
    for name, side in sides.items():
      run = lambda side=side: getattr(side, f'run_{task}')(batch)
      run()  # compiles
      runs[f'{name} {task}'] = run
    times = time_alternating(runs, reps)
    print_times(times)
    out.update(times)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('reps', nargs='?', type=int, default=15, help='repetitions of the term alone')
  p.add_argument('--in_model', type=int, default=0, help='repetitions in the encoder (0: skip)')
  p.add_argument('--json', default='', help='also write the median and minimum seconds to this JSON file')
  a = p.parse_args()
  times = alone(a.reps)
  if a.in_model:
    times.update(in_model(a.in_model))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump({'device_kind': jax.devices()[0].device_kind, 'batch': BATCH, 'seq': SEQ,
                 'seconds': {n: {'median': float(np.median(t)), 'min': float(np.min(t))} for n, t in times.items()}},
                f, indent=1)


if __name__ == '__main__':
  main()
