"""Encoder speed, JAX (encoder_jax) against torch (transformers' *ForSequenceClassification), in one run.

  PYTHONPATH=. .venv/bin/python bench/encoder_speed.py                 # MiniLM shape, seq 128 and 64
  PYTHONPATH=. .venv/bin/python bench/encoder_speed.py --arch bert,mpnet,deberta-v3   # each architecture
  PYTHONPATH=. .venv/bin/python bench/encoder_speed.py --dtype bfloat16
  PYTHONPATH=. .venv/bin/python bench/encoder_speed.py --layers 12 --hidden 768 --seq 128 --reps 3  # BERT-base
  PYTHONPATH=. .venv/bin/python bench/encoder_speed.py --only jax --kernels cpu_tuned,portable --json out.json

Both sides run the same model: an encoder of the architecture (--arch: bert; mpnet, with its relative
attention bias; deberta-v3, with disentangled attention: shared key, 256 log buckets, normed relative
table; random weights), a pooler on [CLS] and a linear classifier (torch: each family's own head), with dropout disabled on both sides (hidden and attention dropout 0, so the two do the
same arithmetic). Two measurements per sequence length:
  forward: logits of one batch (torch: eval mode under inference_mode; JAX: a jitted function).
  train:   one full step: forward, softmax cross-entropy, backward and an AdamW update (torch.optim.AdamW;
           optax.adamw in JAX, jitted with the train state donated).
JAX runs at its default matmul precision (this script must not raise it), jitted with
encoder_jax.compiler_options() unless --xla_options none. torch uses as many threads as cores, or the GPU
when jax runs on one (float32 matmuls in TF32 there, like jax's default). Batches are on the device before
timing, for both. bfloat16: JAX computes in bf16 with float32 params; torch under autocast. JAX and
torch alternate within each repetition, so both see the same background load (which is not to say it
slows them alike: torch's threads suffer more when another job holds a core; see bench/RESULTS.md). The
table gives medians over the repetitions after warm-up, and the last line the ratios torch time / JAX
time (above 1 means JAX is faster). Needs torch, which only bench/ and the fixture script may import.
--kernels times each kernel form (EncoderConfig.kernels) as its own JAX side, all alternating in one run,
and prints each form's time over the first's. --json writes the machine, the medians and the model FLOPs
utilisation (analytic FLOPs over the median time, against the device's peak from bench/machine.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import encoder_jax
from encoder_jax import EncoderConfig

from machine import cpu_model, peak_flops  # bench/ is on sys.path when a script here runs

# Per architecture: EncoderConfig fields, and (transformers class prefix, its config fields).
ARCHS = {
    'bert': ({}, ('Bert', {})),
    'mpnet': ({'model_type': 'mpnet', 'type_vocab_size': 0, 'pad_token_id': 1, 'relative_attention_num_buckets': 32,
               'max_position_embeddings': 514}, ('MPNet', {'pad_token_id': 1, 'max_position_embeddings': 514})),
    'deberta-v3': ({'model_type': 'deberta-v2', 'type_vocab_size': 0, 'relative_attention': True,
                    'position_buckets': 256, 'max_relative_positions': 512, 'pos_att_type': ('p2c', 'c2p'),
                    'share_att_key': True, 'norm_rel_ebd': True, 'position_biased_input': False},
                   ('DebertaV2', {'type_vocab_size': 0, 'relative_attention': True, 'position_buckets': 256,
                                  'max_relative_positions': 512, 'pos_att_type': ['p2c', 'c2p'],
                                  'share_att_key': True, 'norm_rel_ebd': 'layer_norm',
                                  'position_biased_input': False, 'pooler_hidden_act': 'tanh'})),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--arch', default='bert', help=f'comma-separated architectures from {sorted(ARCHS)}')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32', help='compute dtype')
  p.add_argument('--seq', default='128,64', help='comma-separated sequence lengths')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--layers', type=int, default=6)
  p.add_argument('--hidden', type=int, default=384)
  p.add_argument('--heads', type=int, default=12, help='attention heads (MiniLM and BERT-base: 12)')
  p.add_argument('--intermediate', type=int, default=0, help='default: 4 * hidden')
  p.add_argument('--vocab', type=int, default=30522)
  p.add_argument('--labels', type=int, default=3)
  p.add_argument('--reps', type=int, default=7, help='timed repetitions after warm-up')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--threads', type=int, default=0, help='torch threads; default: cores available')
  p.add_argument('--only', choices=('both', 'jax', 'torch'), default='both')
  p.add_argument('--kernels', default='auto', help="comma-separated EncoderConfig.kernels forms, each a JAX side: "
                 "'auto', 'portable', 'cpu_tuned'")
  p.add_argument('--json', default='', help='also write the results to this JSON file')
  p.add_argument('--xla_options', choices=('library', 'none'), default='library',
                 help="library: jit with encoder_jax.compiler_options(); none: XLA's defaults")
  args = p.parse_args(argv)
  args.intermediate = args.intermediate or 4 * args.hidden
  args.seqs = [int(s) for s in args.seq.split(',')]
  args.threads = args.threads or len(os.sched_getaffinity(0))
  args.archs = args.arch.split(',')
  args.forms = args.kernels.split(',')
  bad = set(args.forms) - set(encoder_jax.tuning.KERNEL_FORMS)
  if bad:
    p.error(f'unknown --kernels {sorted(bad)}; choose from {encoder_jax.tuning.KERNEL_FORMS}')
  unknown = set(args.archs) - set(ARCHS)
  if unknown:
    p.error(f'unknown --arch {sorted(unknown)}; choose from {sorted(ARCHS)}')
  return args


def make_batch(args, seq, seed=0):
  """Random ids with right padding (lengths between seq/2 and seq, the longest filling seq)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(seq // 2, seq + 1, size=args.batch)
  lengths[0] = seq
  mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(1000, args.vocab, size=(args.batch, seq)), 0).astype(np.int32)
  types = np.zeros_like(ids)
  labels = rng.integers(0, args.labels, size=args.batch).astype(np.int32)
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': types, 'labels': labels}


# ----------------------------------------------------------------------------------------------------- JAX

class JaxSide:
  def __init__(self, args, arch='bert', kernels='auto'):
    self.config = EncoderConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        intermediate_size=args.intermediate, hidden_dropout=0.0, attention_dropout=0.0, dtype=args.dtype,
        kernels=kernels, **ARCHS[arch][0])
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = args.hidden
    init = jax.nn.initializers.normal(0.02)
    params = {
        'encoder': encoder_jax.init_params(self.config, k1),
        'pooler': {'kernel': init(k2, (h, h)), 'bias': jnp.zeros((h,))},
        'classifier': {'kernel': init(k3, (h, args.labels)), 'bias': jnp.zeros((args.labels,))},
    }
    self.optimizer = optax.adamw(2e-5, weight_decay=0.01)
    self.state = (params, self.optimizer.init(params))
    self.options = encoder_jax.compiler_options() if args.xla_options == 'library' else {}
    self.forward = jax.jit(self._logits, compiler_options=self.options)
    self.train_step = jax.jit(self._train_step, donate_argnums=(0,), compiler_options=self.options)

  def _logits(self, params, batch):
    dtype = jnp.dtype(self.config.dtype)
    hidden = encoder_jax.encode(self.config, params['encoder'], batch['input_ids'], batch['attention_mask'],
                                batch['token_type_ids'])[-1]
    cls = hidden[:, 0].astype(dtype)
    pooled = jnp.tanh(cls @ params['pooler']['kernel'].astype(dtype) + params['pooler']['bias'].astype(dtype))
    logits = pooled @ params['classifier']['kernel'].astype(dtype) + params['classifier']['bias'].astype(dtype)
    return logits.astype(jnp.float32)

  def _train_step(self, state, batch):
    params, opt_state = state

    def loss_fn(p):
      logits = self._logits(p, batch)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def prepare(self, batch):
    """The batch on the device once, so that no timed call includes a host-to-device copy."""
    return jax.device_put(batch)

  def run_forward(self, batch):
    return self.forward(self.state[0], batch).block_until_ready()

  def run_train(self, batch):
    self.state, loss = self.train_step(self.state, batch)
    return loss.block_until_ready()


# --------------------------------------------------------------------------------------------------- torch

class TorchSide:
  def __init__(self, args, arch='bert'):
    import torch
    import transformers
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    self.torch = torch
    # The GPU when jax has one too (both sides on the same kind of device), else the CPU.
    self.device = 'cuda' if torch.cuda.is_available() and jax.default_backend() == 'gpu' else 'cpu'
    if self.device == 'cuda':  # float32 matmuls in TF32, as jax's default precision does on NVIDIA GPUs
      torch.set_float32_matmul_precision('high')
    family, fields = ARCHS[arch][1]
    config = getattr(transformers, family + 'Config')(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=args.intermediate, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=args.labels, **fields)
    self.model = getattr(transformers, family + 'ForSequenceClassification')(config).to(self.device)
    self.token_types = arch == 'bert'  # the others have none
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5, weight_decay=0.01)
    self.autocast = args.dtype == 'bfloat16'

  def prepare(self, batch):
    """int64 tensors on the device, once (see JaxSide.prepare)."""
    return {k: self.torch.from_numpy(v).long().to(self.device) for k, v in batch.items()
            if k != 'token_type_ids' or self.token_types}

  def _ctx(self):
    return self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=self.autocast)

  def _sync(self):
    if self.device == 'cuda':  # kernels run asynchronously: wait for them, as block_until_ready does
      self.torch.cuda.synchronize()

  def run_forward(self, batch):
    self.model.eval()
    with self.torch.inference_mode(), self._ctx():
      logits = self.model(**{k: v for k, v in batch.items() if k != 'labels'}).logits
    self._sync()
    return logits

  def run_train(self, batch):
    self.model.train()  # dropout probabilities are 0, so this only switches bookkeeping
    self.optimizer.zero_grad(set_to_none=True)
    with self._ctx():
      loss = self.model(**batch).loss
    loss.backward()
    self.optimizer.step()
    self._sync()
    return loss


# ------------------------------------------------------------------------------------------------ timing

def timed(fn, batch):
  start = time.perf_counter()
  fn(batch)
  return time.perf_counter() - start


def model_flops(args, seq: int) -> tuple[float, float]:
  """Analytic FLOPs of one batch (sweet_jax.curves' count): forward, and train step = 3 x forward."""
  from sweet_jax import curves
  cfg = encoder_jax.EncoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                                  num_heads=args.heads, intermediate_size=args.intermediate,
                                  max_position_embeddings=max(512, seq))
  forward = args.batch * (curves.embedding_flops(cfg, seq) + sum(curves.layer_flops(cfg, l, seq)
                                                                 for l in range(args.layers)))
  return float(forward), 3.0 * forward


def mfu(args, results, side: str) -> list[dict]:
  """Achieved FLOP/s of a JAX side, and its model FLOPs utilisation where the device's peak is known; printed
  and returned as rows. The FLOPs are BERT's for every architecture (MPNet's and DeBERTa's relative score
  terms come on top)."""
  peak, kind = peak_flops(args.dtype)
  if peak is None:
    print(f'# MFU: peak FLOP/s of {kind!r} unknown, not reported')
  rows = []
  for seq in args.seqs:
    for task, flops in zip(('forward', 'train'), model_flops(args, seq)):
      rate = flops / statistics.median(results[(seq, task, side)])
      share = f' of {peak / 1e12:.0f} peak = {rate / peak:.1%}' if peak else ''
      print(f'# {side} seq {seq} {task}: {rate / 1e12:.3f} TFLOP/s{share}')
      rows.append({'side': side, 'seq': seq, 'task': task, 'flops': flops, 'flops_per_s': rate,
                   'peak_flops_per_s': peak, 'mfu': rate / peak if peak else None})
  return rows


def main():
  args = parse_args()
  report = {'machine': machine_line(args), 'device_kind': jax.devices()[0].device_kind,
            'peak_flops_per_s': peak_flops(args.dtype)[0], 'dtype': args.dtype, 'batch': args.batch,
            'model': {'layers': args.layers, 'hidden': args.hidden, 'heads': args.heads,
                      'intermediate': args.intermediate}, 'archs': {}}
  for arch in args.archs:
    report['archs'][arch] = run_arch(args, arch)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1)


def machine_line(args) -> str:
  return (f'{len(os.sched_getaffinity(0))} cores, {cpu_model()}; jax {jax.__version__} '
          f'({jax.default_backend()}: {jax.devices()[0].device_kind}), torch threads {args.threads}')


def run_arch(args, arch) -> dict:
  """Every side on one architecture, alternating; prints its table and ratios, returns them."""
  sides = {}
  if args.only in ('both', 'jax'):
    for form in args.forms:
      sides['jax' if len(args.forms) == 1 else f'jax-{form}'] = JaxSide(args, arch, form)
  if args.only in ('both', 'torch'):
    sides['torch'] = TorchSide(args, arch)
  jax_sides = [name for name in sides if name.startswith('jax')]
  print(f'# architecture: {arch}')
  print(f'# machine: {machine_line(args)}' + (f', torch on {sides["torch"].device}' if 'torch' in sides else ''))
  print(f'# model: {args.layers} layers x {args.hidden} hidden, {args.heads} heads, intermediate '
        f'{args.intermediate}, vocab {args.vocab}; batch {args.batch}; {args.dtype}; dropout disabled')
  if jax_sides:
    print(f'# JAX compiler options: {sides[jax_sides[0]].options or "XLA defaults"}; kernel forms {args.forms}')
  results = time_sides(args, sides)
  print(f'{"seq":>5} {"task":>8} {"side":>14} {"median s":>9} {"min s":>8} {"max s":>8}')
  for (seq, task, name), ts in results.items():
    print(f'{seq:>5} {task:>8} {name:>14} {statistics.median(ts):9.4f} {min(ts):8.4f} {max(ts):8.4f}')
  out = {'times': [{'seq': seq, 'task': task, 'side': name, 'median_s': statistics.median(ts), 'min_s': min(ts),
                    'max_s': max(ts)} for (seq, task, name), ts in results.items()],
         'mfu': [row for name in jax_sides for row in mfu(args, results, name)], 'ratios': {}}
  pairs = [(jax_sides[0], n) for n in jax_sides[1:]] + [('torch', n) for n in jax_sides if 'torch' in sides]
  for first, other in pairs:
    ratios = {f'seq{seq} {task}': statistics.median(results[(seq, task, first)]) /
              statistics.median(results[(seq, task, other)]) for seq in args.seqs for task in ('forward', 'train')}
    out['ratios'][f'{first}/{other}'] = ratios
    print(f'speed ratio {first}/{other} (>1: {other} faster), {arch}: '
          + ', '.join(f'{k} {r:.2f}x' for k, r in ratios.items()))
  return out


def time_sides(args, sides) -> dict:
  """(seq, task, side) -> seconds of each timed repetition; the sides alternate within every repetition."""
  results = {}
  for seq in args.seqs:
    batch = make_batch(args, seq)
    prepared = {name: side.prepare(batch) for name, side in sides.items()}
    for task in ('forward', 'train'):
      times = {name: [] for name in sides}
      for _ in range(args.warmup):  # compiles (JAX) and warms allocators and caches (all sides)
        for name, side in sides.items():
          getattr(side, f'run_{task}')(prepared[name])
      for _ in range(args.reps):
        for name, side in sides.items():  # alternate, so background load hits every side alike
          times[name].append(timed(getattr(side, f'run_{task}'), prepared[name]))
      for name, ts in times.items():
        results[(seq, task, name)] = ts
  return results


if __name__ == '__main__':
  main()
