"""What a benchmark ran on, for bench/RESULTS.md."""

import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, or platform.processor()."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown'


# Dense peak FLOP/s of accelerators by device_kind substring: (bfloat16, float32). float32 matmuls run at
# jax's default precision, which is TF32 on NVIDIA Ampere/Hopper and bf16 passes on TPU.
PEAK_FLOPS = {
    'H200': (989e12, 494e12), 'H100': (989e12, 494e12), 'A100': (312e12, 156e12), 'L4': (121e12, 60e12),
    'TPU v6': (918e12, 918e12), 'TPU v5p': (459e12, 459e12), 'TPU v5': (197e12, 197e12),
    'TPU v4': (275e12, 275e12), 'TPU v3': (123e12, 123e12), 'TPU v2': (45e12, 45e12),
}


def peak_flops(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s of jax's first device at this compute dtype, or None where unknown (CPUs); its device_kind)."""
  import jax
  kind = jax.devices()[0].device_kind
  peak = next((p for k, p in PEAK_FLOPS.items() if k in kind), None)
  if peak is None:
    return None, kind
  return (peak[0] if dtype == 'bfloat16' else peak[1]), kind


# ------------------------------------------------------------------ what the model-shaped benchmarks share

def minilm_shaped():
  """An EncoderConfig of MiniLM's shape (6 layers x 384, 12 heads, FFN 1536, 512 positions): speed does not
  depend on the weights' values, so the benchmarks that time programs rather than models use random ones."""
  import encoder_jax
  return encoder_jax.EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                                   intermediate_size=1536, max_position_embeddings=512)


def random_inputs(batch: int, seq: int):
  """(input_ids, attention_mask) int32 [batch, seq], seeded by seq: random word ids, each row padded after a
  random length in [seq / 4, seq]."""
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(seq)
  ids = jnp.asarray(rng.integers(1000, 30000, (batch, seq)), jnp.int32)
  mask = jnp.asarray(np.arange(seq)[None] < rng.integers(seq // 4, seq + 1, batch)[:, None], jnp.int32)
  return ids, mask


def random_constants(key: int, config, seq: int):
  """Row-stochastic random constant attention matrices [layers, heads, seq, seq], as an estimate would give
  (their values do not affect speed)."""
  import jax
  shape = (config.num_layers, config.num_heads, seq, seq)
  return jax.nn.softmax(jax.random.normal(jax.random.key(key), shape), axis=-1)


def time_alternately(run, reps: int) -> dict[str, float]:
  """Median seconds of each zero-argument program in `run` (name -> fn returning jax arrays), each compiled
  and run twice first, then timed alternately rep by rep, so that noise from other processes on the machine
  hits all of them alike."""
  import time
  import jax
  import numpy as np
  for fn in run.values():
    jax.block_until_ready(fn())  # compile
    jax.block_until_ready(fn())
  times = {name: [] for name in run}
  for _ in range(reps):
    for name, fn in run.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}
