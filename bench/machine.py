"""What a benchmark ran on, for bench/RESULTS.md."""

import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, or platform.processor()."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown'
