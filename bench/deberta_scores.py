"""DeBERTa's relative score term alone, two formulations in one run: forward, and forward plus gradient.

  PYTHONPATH=. python bench/deberta_scores.py            # 15 repetitions, medians and minima in ms

current: encoder_jax.relative.disentangled_scores: scores per distance ([batch, heads, seq, 2 seq - 1] per
         term) moved into place by the Transformer-XL relative shift.
gathered: the projected table's rows gathered per (query, key) pair into [seq, seq, heads, d] (independent of
         the batch), then contracted against q and k directly; its gradient is a scatter-add of that size.
Shape: batch 32, seq 128, 12 heads of 32, DeBERTa-v3's 256 log buckets (bench/encoder_speed.py's deberta-v3).
Both must agree (printed: the largest differences of values and of gradients); the two alternate in every
repetition, so both see the same background load. The result that decided encoder_jax/relative.py is in
bench/RESULTS.md.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import EncoderConfig, relative

CFG = EncoderConfig(model_type='deberta-v2', vocab_size=100, hidden_size=384, num_layers=6, num_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                    position_buckets=256, max_relative_positions=512, pos_att_type=('p2c', 'c2p'),
                    share_att_key=True, norm_rel_ebd=True, position_biased_input=False)
BATCH, SEQ = 32, 128


def gathered(q, k, pos_query, pos_key):
  """The same score term as relative.disentangled_scores, from rows gathered per (query i, key j)."""
  seq, d = q.shape[1], q.shape[-1]
  c2p_rows, p2c_rows = relative.deberta_rows(CFG, seq)
  i = np.arange(seq)
  c2p = c2p_rows[i[:, None] - i[None, :] + seq - 1]  # [i, j]: row of distance i - j
  p2c = p2c_rows[i[None, :] - i[:, None] + seq - 1]  # [i, j]: row of distance j - i
  s = jnp.einsum('bind,ijnd->bnij', q, pos_key[c2p], preferred_element_type=jnp.float32)
  s = s + jnp.einsum('bjnd,ijnd->bnij', k, pos_query[p2c], preferred_element_type=jnp.float32)
  return s / np.sqrt(d * (1 + len(CFG.pos_att_type)))


def main(reps: int) -> None:
  n, d = CFG.num_heads, CFG.head_dim
  keys = jax.random.split(jax.random.key(0), 4)
  args = (jax.random.normal(keys[0], (BATCH, SEQ, n, d)), jax.random.normal(keys[1], (BATCH, SEQ, n, d)),
          jax.random.normal(keys[2], (2 * CFG.attention_span, n, d)),
          jax.random.normal(keys[3], (2 * CFG.attention_span, n, d)))
  fns = {'current': lambda *a: relative.disentangled_scores(CFG, *a), 'gathered': gathered}
  runs = {}
  for name, f in fns.items():
    runs[f'{name} forward'] = jax.jit(f)
    runs[f'{name} forward+grad'] = jax.jit(jax.grad(lambda *a, f=f: (f(*a) ** 2).sum(), argnums=(0, 1, 2, 3)))
  value = {name: fn(*args) for name, fn in runs.items()}
  print('values differ by at most', float(jnp.abs(value['current forward'] - value['gathered forward']).max()))
  print('gradients differ by at most (relative)', max(
      float(jnp.abs(a - b).max() / jnp.abs(a).max())
      for a, b in zip(value['current forward+grad'], value['gathered forward+grad'])))
  times = {name: [] for name in runs}
  for _ in range(reps):
    for name, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  for name, t in times.items():
    print(f'{name:24s} median {1e3 * np.median(t):7.1f} ms   min {1e3 * np.min(t):7.1f} ms')


if __name__ == '__main__':
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
