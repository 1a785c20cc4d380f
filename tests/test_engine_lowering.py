"""Every program of the adaptive engine lowers for TPU and CUDA from this CPU machine, in float32 and bfloat16:
each host-scheduled segment call (stage: modes host_stream, compact, calm), the full model, and the device
scheduler's chunk program, whose lowered module must be one while loop with no host callback inside (the
answers leave the device once per chunk)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sweet_jax import device_stream
from sweet_jax import engine_programs as programs
from tests.adaptive_models import CFG, ECFG, make_models

BATCH, SEQ, BUCKETS = 4, 5, (2, 4)
PLATFORMS = ('tpu', 'cuda')
HOST_CALLS = ('callback', 'outfeed', 'infeed', 'send', 'recv')  # what a host round trip lowers to


def lowered(fn, *args, **static):
  """{platform: the StableHLO text of fn(*args, **static) lowered for it} (jax.jit(...).trace(...).lower)."""
  traced = fn.trace(*args, **static)
  return {p: traced.lower(lowering_platforms=(p,)).as_text() for p in PLATFORMS}


def setup(method, dtype):
  cfg = CFG.replace(dtype=dtype)
  params = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                        make_models()[method])
  spec = programs.Spec(cfg, ECFG, method == 'multi_model', 2 * BATCH)
  temps, rule, threshold = jnp.ones(ECFG.num_exits), jnp.int32(0), jnp.float32(0.5)
  return spec, params, temps, rule, threshold


def dummy_batch(rows):
  return {'input_ids': np.ones((rows, SEQ), np.int32), 'attention_mask': np.ones((rows, SEQ), np.int32),
          'token_type_ids': np.zeros((rows, SEQ), np.int32)}


def chunk_args(spec, params, temps, rule, threshold, k=3):
  """The arguments of device_stream.chunk on k full input batches (the end of the stream: flush)."""
  inputs = jax.tree.map(lambda *a: np.stack(a), *[programs.input_rows(dummy_batch(BATCH), 0, BATCH)] * k)
  queues = device_stream.Queues.empty(spec, SEQ)
  return spec, params, None, temps, rule, threshold, queues, inputs, jnp.int32(k), jnp.bool_(True)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_chunk_program_lowers_without_host_calls(method, dtype):
  texts = lowered(device_stream.chunk, *chunk_args(*setup(method, dtype)), buckets=BUCKETS)
  for platform, text in texts.items():
    assert text.count('stablehlo.while') == 1, platform  # the schedule: one loop over segment calls
    # One branch per (exit, rows): exit 0 on a full batch, exits 1.. at every bucket.
    assert 'stablehlo.case' in text and text.count('stablehlo.return') >= 1 + (ECFG.num_exits - 1) * 2
    assert not [w for w in HOST_CALLS if w in text.lower()], platform
    if dtype == 'bfloat16' and method == 'sweet':
      assert 'bf16' in text  # the queued hidden states and the layers run in bfloat16


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_host_scheduled_programs_lower(method, dtype):
  spec, params, temps, rule, threshold = setup(method, dtype)
  for rows in BUCKETS:
    src = programs.input_rows(dummy_batch(rows), 0, rows)
    for i in range(ECFG.num_exits):
      last = i == ECFG.num_exits - 1
      dst = None if last else programs.empty_ring(spec, SEQ)
      for keep_all in (False, True):  # calm keeps every row on
        texts = lowered(programs.stage, spec, params, None, temps, rule, threshold, jnp.bool_(keep_all), src, 0,
                        rows, dst, 0, index=i, rows=rows)
        for platform, text in texts.items():
          assert not [w for w in HOST_CALLS if w in text.lower()], (platform, i, rows)
          if not last:  # the scatter into the next queue is part of the call
            assert 'stablehlo.scatter' in text, (platform, i, rows)
      src = programs.empty_ring(spec, SEQ)
  texts = lowered(programs.full, spec, params, None, dummy_batch(BATCH))
  assert all('stablehlo.dot_general' in t for t in texts.values())


@pytest.mark.parametrize('method', ['sweet', 'multi_model'])
def test_chunk_program_never_copies_a_queue(method):
  """The queues stay in place through the loop: the compiled chunk program (XLA's CPU compiler here; copy
  insertion is the same pass on every backend) has no copy of a ring's payload. A switch whose branches return
  the queues makes XLA copy every ring on every segment call (3-7% of the ideal speedup at batch 256)."""
  args = chunk_args(*setup(method, 'float32'))
  spec = args[0]
  text = device_stream.chunk.trace(*args, buckets=BUCKETS).lower().compile().as_text()
  ring = programs.empty_ring(spec, SEQ)['payload']
  shapes = {','.join(map(str, s)) for a in jax.tree.leaves(ring)
            for s in (a.shape, (ECFG.num_exits - 1, *a.shape))}  # one ring's, or the stacked rings'
  copies = [line for line in text.splitlines() if ' copy(' in line
            and any(f'[{s}]' in line.split(' copy(')[0] for s in shapes)]
  assert not copies, copies[:3]
