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
