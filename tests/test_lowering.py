"""Every jitted program of the library lowers for TPU and for CUDA GPUs, on this CPU machine.

A change that only a TPU or GPU compiler would refuse (an op with no lowering there, a CPU-only kernel form
with no portable twin: encoder_jax.tuning.pick) fails here, without the hardware. Each program is traced
once on tiny shapes and lowered for both platforms in one go (`lowering_platforms`): the train step of each
exit method and of the PAPA probe in float32 and bfloat16, the evaluation step, PAPA's attention averaging,
and the all-exit forward eval.py scores a workdir with (drivers.sweet_eval.forward_fn). The adaptive engine's
own programs, which the predictor runs, are the engine's tests to lower.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoder_jax
from drivers import sweet_eval
from papa_jax import averages, probe
from pipeline import train_loop
from sweet_jax import exits, objectives
from tests import test_train_loop as t

PLATFORMS = ('tpu', 'cuda')
EXIT_CONFIG = exits.ExitConfig((1, 3), 2)
LENGTH = 8  # PAPA's layout length (t.SEQ)


def _config(dtype, model_type='deberta-v2'):
  """A tiny encoder; DeBERTa v3-like by default, the family with the most kernel forms (its relative term,
  the shared table's layer norm, the convolution)."""
  common = dict(vocab_size=t.VOCAB, hidden_size=15, num_layers=3, num_heads=3, intermediate_size=23,
                max_position_embeddings=17, dtype=dtype)
  if model_type == 'bert':
    return encoder_jax.EncoderConfig(**common)
  return encoder_jax.EncoderConfig(
      model_type='deberta-v2', type_vocab_size=0, relative_attention=True, position_buckets=4,
      max_relative_positions=10, pos_att_type=('p2c', 'c2p'), share_att_key=True, norm_rel_ebd=True,
      conv_kernel_size=3, position_biased_input=False, **common)


def _batch():
  return next(iter(t.data.iterate_batches(t.dataset(), t.encode, 8, seed=0, epoch=0, shuffle=False)))


def _lower(fn, *args):
  """fn (jitted, or jitted here) traced on args and lowered for every platform in PLATFORMS: StableHLO text."""
  jitted = fn if hasattr(fn, 'trace') else jax.jit(fn)
  return jitted.trace(*args).lower(lowering_platforms=PLATFORMS).as_text()


def _exit_method(name, dtype):
  """{program: (fn, *args)} of an exit method: its train step, its eval step (predict) and the forward that
  eval.py scores a workdir with (the predictor's numbers come from it)."""
  cfg = _config(dtype)
  init, loss, predict = objectives.make_fns(name, cfg, EXIT_CONFIG, encoder_jax.init_params(cfg, jax.random.key(0)))
  method = train_loop.Method(name, init, loss, predict, objectives.param_groups(name, EXIT_CONFIG))
  tx = train_loop.make_optimizer(t.config().train, 10, param_groups=method.param_groups)
  params = method.init(jax.random.key(1))
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  batch = _batch()
  return {'train step': (train_loop.make_train_step(method, tx), state, batch, jax.random.key(2)),
          'eval step': (method.predict, params, batch),
          'evaluation forward': (sweet_eval.forward_fn(name, cfg, EXIT_CONFIG, None), params, batch)}


def _papa(dtype):
  """{program: (fn, *args)} of PAPA: the probe's train step with constant heads in the encoder, and the
  attention averaging."""
  cfg = _config(dtype)
  enc_params = encoder_jax.init_params(cfg, jax.random.key(0))
  frozen = {'encoder': enc_params, 'constants': np.full((3, 3, LENGTH, LENGTH), 1.0 / LENGTH, np.float32)}
  head = probe.init_head(jax.random.key(1), cfg.num_layers, cfg.hidden_size, LENGTH, 2)
  loss_fn, _ = probe.online_fns(cfg.with_heads('constant', [(0, 1), (2, 0)]), 0.1)
  step, optimizer = probe._train_step(loss_fn, 1e-3)  # the jitted program probe.fit runs
  b = _batch()
  return {'PAPA probe train step': (step, head, optimizer.init(head), frozen, b, jax.random.key(2)),
          'PAPA averaging': (functools.partial(averages.batch_sums, cfg), enc_params, b['input_ids'],
                             b['attention_mask'], b['token_type_ids'], b['example_mask'])}


PROGRAMS = {  # program -> (builder of {program: (fn, *args)}, its argument besides dtype)
    **{f'{name} {program}': (_exit_method, name, program) for name in ('sweet', 'early_exit', 'multi_model')
       for program in ('train step', 'eval step', 'evaluation forward')},
    'PAPA probe train step': (lambda _, dtype: _papa(dtype), None, 'PAPA probe train step'),
    'PAPA averaging': (lambda _, dtype: _papa(dtype), None, 'PAPA averaging'),
}


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('program', sorted(PROGRAMS))
def test_program_lowers_for_tpu_and_cuda(program, dtype):
  build, arg, key = PROGRAMS[program]
  fn, *args = build(arg, dtype)[key]
  text = _lower(fn, *args)
  assert 'stablehlo' in text
  # 'auto' kernels: the CPU-tuned forms never reach an accelerator (DeBERTa's per-head loop is a while).
  assert 'stablehlo.while' not in text
