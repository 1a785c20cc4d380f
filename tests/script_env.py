"""What every test process compiles with, and the environment of the scripts tests start (train.py, eval.py,
predict.py, the multi-process worker)."""

import os

# LLVM at -O0 for XLA's CPU code. The suite is compile-bound (hundreds of tiny programs, each run a few
# times): this roughly halves compile time and left every test's result unchanged when introduced (the whole
# suite passes either way). It changes how fast the generated code runs, not what it computes; speed is never
# asserted in a test, and bench/ runs with jax's defaults.
COMPILE_FLAGS = '--xla_backend_optimization_level=0'


def script_env(*, drop=(), **extra) -> dict[str, str]:
  """os.environ for a script a test runs: without the test process's 8 simulated devices (a script sees the
  machine's one CPU device), with COMPILE_FLAGS, without the variables in `drop`, plus `extra`."""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', *drop)}
  return {**env, 'XLA_FLAGS': COMPILE_FLAGS, **extra}
