"""XLA compiler options under which this encoder runs faster, for callers to pass to jax.jit.

  step = jax.jit(train_step, donate_argnums=(0,), compiler_options=encoder_jax.compiler_options())

Options are per compiled function (jax.jit's `compiler_options`), so nothing global changes: no XLA_FLAGS,
no effect on other jitted code. On CPU the option turns off XLA's YNNPACK fusions, which on this encoder
bundle a whole sublayer (three matmuls, layer norms, GELU) into one library call that runs slower than
XLA's own matmuls and loop fusions; see bench/RESULTS.md for the measurements. Elsewhere it is empty.

`pick` chooses between the CPU-tuned and the portable form of a computation (EncoderConfig.kernels).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def _accepted(backend: str) -> bool:
  """Whether this jaxlib knows the options (they are experimental and may be renamed or dropped)."""
  try:
    x = jax.device_put(jnp.zeros(2), jax.devices(backend)[0])  # jit compiles where its input lives
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(x).compile()
  except Exception:  # an unknown option is an error at compile time; then there is nothing to tune
    return False
  return True


def compiler_options(backend: str | None = None) -> dict[str, str]:
  """Options for jax.jit on `backend` (default: jax.default_backend()); {} where none apply."""
  backend = backend or jax.default_backend()
  if backend != 'cpu' or not _accepted(backend):
    return {}
  return dict(CPU_OPTIONS)


# ------------------------------------------------------------------------------------ kernel forms
# Some arithmetic in this encoder has two forms that compute the same values: a CPU-tuned one, chosen by
# CPU profiles (bench/RESULTS.md), and its portable twin, the straightforward form that GPU and TPU
# compilers know how to fuse. EncoderConfig.kernels picks.
KERNEL_FORMS = ('auto', 'portable', 'cpu_tuned')


def pick(kernels: str, cpu_tuned: Callable[..., Any], portable: Callable[..., Any], *args: Any) -> Any:
  """cpu_tuned(*args) or portable(*args), as `kernels` (EncoderConfig.kernels) says.

  'auto' stages both out with lax.platform_dependent: the choice is made when the program is lowered, for
  the platform it is lowered for (CPU-tuned on 'cpu', portable elsewhere), so a program lowered on a CPU
  host for a TPU gets the TPU's form, and only the chosen form reaches the compiler.
  """
  if kernels == 'cpu_tuned':
    return cpu_tuned(*args)
  if kernels == 'portable':
    return portable(*args)
  if kernels != 'auto':
    raise ValueError(f'kernels must be one of {KERNEL_FORMS}, got {kernels!r}.')
  return jax.lax.platform_dependent(*args, cpu=cpu_tuned, default=portable)
