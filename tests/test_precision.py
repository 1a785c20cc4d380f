"""bfloat16 compute with float32 parameters: agrees with float32 within a stated tolerance.

Tolerances: bf16 has an 8-bit mantissa (relative step 2**-8 = 0.0039). Through a few post-layer-norm
layers the hidden states (unit scale after layer norm) drift by a few hundredths: we allow 0.1 absolute
on hidden states and 5% relative on the loss; gradients' direction must agree (cosine > 0.99).
"""

import jax
import jax.numpy as jnp

import encoder_jax
from pipeline import train_loop
from sweet_jax import exits, objectives
from tests import test_train_loop as t

CFG = encoder_jax.EncoderConfig(vocab_size=53, hidden_size=30, num_layers=3, num_heads=3, intermediate_size=47,
                                max_position_embeddings=17)


def _batch():
  return next(iter(t.data.iterate_batches(t.dataset(), t.encode, 8, seed=0, epoch=0, shuffle=False)))


def test_bf16_encoder_agrees_with_f32_and_computes_in_bf16():
  params = encoder_jax.init_params(CFG, jax.random.key(0))
  b = _batch()
  f32 = encoder_jax.encode(CFG, params, b['input_ids'], b['attention_mask'])
  bf16 = encoder_jax.encode(CFG.replace(dtype='bfloat16'), params, b['input_ids'], b['attention_mask'])
  assert bf16[-1].dtype == jnp.bfloat16 and f32[-1].dtype == jnp.float32
  err = max(float(jnp.abs(x.astype(jnp.float32) - y).max()) for x, y in zip(bf16, f32))
  assert err < 0.1
  assert err > 0  # it really ran in bf16


def test_bf16_train_step_keeps_float32_params_and_matches_loss():
  losses, grads, states = {}, {}, {}
  for dtype in ('float32', 'bfloat16'):
    cfg = CFG.replace(dtype=dtype)
    pretrained = encoder_jax.init_params(CFG, jax.random.key(0))
    init, loss, predict = objectives.make_fns('sweet', cfg, exits.ExitConfig((1, 3), 2), pretrained)
    method = train_loop.Method('sweet', init, loss, predict, objectives.param_groups('sweet', exits.ExitConfig((1, 3), 2)))
    tx = train_loop.make_optimizer(t.config(warmup_fraction=0.0).train, 10, param_groups=method.param_groups)
    params = method.init(jax.random.key(1))
    state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
    states[dtype], metrics = jax.jit(train_loop.make_train_step(method, tx))(state, _batch(), jax.random.key(2))
    losses[dtype] = float(metrics['loss'])
    grads[dtype] = jax.grad(lambda p: loss(p, _batch(), None)[0])(params)
    assert predict(params, _batch()).dtype == jnp.float32  # logits leave the heads in float32
  for leaf in jax.tree.leaves(states['bfloat16']):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype  # params and Adam moments stay float32
  assert abs(losses['bfloat16'] - losses['float32']) / losses['float32'] < 0.05
  flat = lambda g: jnp.concatenate([x.ravel().astype(jnp.float32) for x in jax.tree.leaves(g)])
  a, b = flat(grads['float32']), flat(grads['bfloat16'])
  assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.99
