"""Adaptive inference speed: measured speedup of real early exit against the FLOPs ideal, in one run.

  PYTHONPATH=. .venv/bin/python bench/adaptive_speed.py                       # heads fit here (below)
  PYTHONPATH=. .venv/bin/python bench/adaptive_speed.py --config configs/sweet_demo.py --workdir runs/sweet_demo
  PYTHONPATH=. .venv/bin/python bench/adaptive_speed.py --batch-sizes 64 --examples 1024 --repeats 5

Model: the packaged MiniLM (all-MiniLM-L6-v2, 6 x 384) with exits after layers 1, 2, 4 and 6, mean pooling.
With --workdir (and its --config) the trained checkpoint is restored and timed on that config's eval split
with its tokenization. Without, the pretrained encoder is
kept frozen and only the four exit heads are fit (Adam, --head-steps steps of 64, on mean-pooled features of
2,000 training sentences), so the exits are real classifiers of different quality and the exit pattern is
non-trivial; temperatures are fit on the held-out calibration split. Data: the Rotten Tomatoes movie-review
sentences of pipeline.data ('movie_reviews'), tokenized to at most 64 tokens in length buckets (32, 64); the
timed examples are the first --examples of its eval split (fewer at small batch sizes, where a pass is
slower per example on CPU: --examples-small, --examples-batch1).

For each batch size and each of the paper's 11 thresholds: accuracy, layer_fraction, flops_fraction (see
sweet_jax.curves), the ideal speedup 1 / flops_fraction, and the measured speedup = wall-clock of the full
model (embeddings, 6 layers, the last head; one jitted call per batch) over wall-clock of adaptive inference
on the same batches, for the engine modes of sweet_jax.adaptive (--modes): stream (continuous batching
scheduled on the device, the default), host_stream (the same schedule driven by the host, one round trip per
segment call: the engine before issue 26), compact (per-batch compaction) and calm (no compaction), each with
its ratio measured / ideal, and each engine's host round trips per 1,000 examples.
Compilation is excluded (every program is compiled by warm-up first). Each repeat runs the full model and
then every mode back to back; a speedup is median(full-model times) / median(mode times) over the --repeats
at that threshold (--calm-repeats for calm, only shown for comparison; a median of 1 is that one run). The
JSON also holds best-of-repeats ratios (min / min: load from other processes only ever slows a run down).
Every engine run is checked against the offline sweep (every real example answered, same exits and predictions).
Per batch size: the full model's achieved FLOP/s and, where the device's peak is known (bench/machine.py),
its model FLOPs utilisation (MFU), and the engines' range over thresholds (useful FLOPs / time / peak; an
engine's MFU is the full model's times its measured / ideal ratio).
Last lines, per batch size: the worst ratio over thresholds whose layer_fraction <= 0.7 (goal: >= 0.95), the
ratio at threshold 1.0 (goal: >= 0.97), and the round trips per 1,000 examples of stream and host_stream.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import encoder_jax
from drivers import sweet_eval
from pipeline import data
from sweet_jax import adaptive, calibration, curves, exits

from machine import cpu_model, peak_flops  # bench/ is on sys.path when a script here runs

EXIT_LAYERS = (1, 2, 4, 6)
MAX_LENGTH = 64


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch-sizes', default='1,8,64', help='comma-separated batch sizes')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32', help='encoder compute dtype')
  p.add_argument('--examples', type=int, default=512, help='eval sentences timed at batch sizes >= 16')
  p.add_argument('--examples-small', type=int, default=256, help='eval sentences timed at batch sizes 2..15')
  p.add_argument('--examples-batch1', type=int, default=64, help='eval sentences timed at batch size 1')
  p.add_argument('--repeats', type=int, default=5, help='timed runs per measurement (median)')
  p.add_argument('--thresholds', default='', help='comma-separated confidence thresholds (default: the 11 of '
                 'curves.default_thresholds)')
  p.add_argument('--modes', default=','.join(adaptive.MODES), help='comma-separated engine modes to time')
  p.add_argument('--calm-repeats', type=int, default=1,
                 help='timed runs of the no-compaction engine (a comparison only; it is slow)')
  p.add_argument('--head-steps', type=int, default=300, help='Adam steps fitting the heads (no --workdir)')
  p.add_argument('--config', default='configs/sweet_demo.py', help='config file of --workdir')
  p.add_argument('--workdir', default='', help='a trained workdir whose checkpoint to restore')
  p.add_argument('--out', default='', help='also write the results as JSON here')
  return p.parse_args()


def machine() -> str:
  return f'{os.cpu_count()} cores ({cpu_model()}), jax {jax.__version__} on {jax.default_backend()}'


batches = sweet_eval.tokenized_batches  # materialised once: the timing excludes tokenization


def pooled_features(cfg, params, dataset, encode_fn, batch_size=64):
  """Mean-pooled hidden states after each exit layer: [E, N, H] (the heads' inputs), and labels [N]."""
  @jax.jit
  def feats(p, batch):
    hidden = encoder_jax.encode(cfg, p, batch['input_ids'], batch['attention_mask'], batch['token_type_ids'])
    return jnp.stack([exits.pool(hidden[k], batch['attention_mask'], 'mean') for k in EXIT_LAYERS])
  out, labels = [], []
  for batch in batches(dataset, encode_fn, batch_size):
    keep = batch['example_mask'] > 0
    inputs = {k: batch[k] for k in ('input_ids', 'attention_mask', 'token_type_ids')}
    out.append(np.asarray(feats(params, inputs))[:, keep])
    labels.append(batch['labels'][keep])
  return np.concatenate(out, 1), np.concatenate(labels)


def head_logits(heads, features):
  """Exit heads on pooled features [E, N, H] -> [E, N, C] (a [N, 1, H] 'sequence' pools to itself)."""
  ones = jnp.ones(features.shape[1:2] + (1,), jnp.int32)
  return jnp.stack([exits.apply_head(h, f[:, None], ones, 'mean') for h, f in zip(heads, features)])


def fit_heads(cfg, pretrained, splits, encode_fn, steps, num_labels):
  """Frozen pretrained encoder, fresh heads fit on 2,000 training sentences; returns exit-model params."""
  ecfg = exits.ExitConfig(EXIT_LAYERS, num_labels, pooling='mean', classifier_dropout=0.0)
  params = exits.init_exit_model(jax.random.key(0), cfg, pretrained, ecfg)
  train = splits.train.subset(np.random.default_rng(0).permutation(len(splits.train))[:2000])
  features, labels = pooled_features(cfg, params['encoder'], train, encode_fn)
  tx = optax.adam(1e-3)
  heads = params['heads']
  opt = tx.init(heads)

  @jax.jit
  def step(heads, opt, x, y):
    def loss(h):
      logits = head_logits(h, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y[None]).mean(-1).sum()
    value, grads = jax.value_and_grad(loss)(heads)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(heads, updates), opt, value

  rng = np.random.default_rng(1)
  for _ in range(steps):
    idx = rng.integers(0, len(labels), 64)
    heads, opt, _ = step(heads, opt, features[:, idx], labels[idx])
  params['heads'] = heads
  return ecfg, params


def load_config(path):
  """get_config() of a config file (absl flags are not parsed here)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def restore(config, workdir, num_labels):
  """(encoder config, exit config, params, method, encode_fn) of a trained workdir."""
  from drivers import methods
  from pipeline import train_loop
  built = methods.build(config, num_labels)
  params = train_loop.restore_params(config, workdir, built.method)
  return built.encoder_config, built.exit_config, jax.device_get(params), config.method, built.encode_fn


def all_exit_logits(cfg, ecfg, params, method, batch_list):
  """Every exit's logits [E, N, C] and each example's padded length [N], from the same batches (eval.py's)."""
  logits, _, lengths = sweet_eval.all_exit_logits(sweet_eval.forward_fn(method, cfg, ecfg, None), params, batch_list)
  return logits, lengths


class Model(NamedTuple):
  """What is timed: the exit model, its tokenization and its calibrated temperatures."""
  cfg: encoder_jax.EncoderConfig
  ecfg: exits.ExitConfig
  params: dict  # on the device
  method: str
  encode_fn: Callable
  temps: np.ndarray  # [E], fit on (at most 512 of) the calibration split
  source: str  # what the model is, for the report


def load_model(args, config, splits) -> Model:
  """The trained --workdir, or the frozen pretrained MiniLM with heads fit here."""
  num_labels = splits.train.num_labels
  if args.workdir:
    cfg, ecfg, params, method, encode_fn = restore(config, args.workdir, num_labels)
    source = f'trained checkpoint of {args.workdir}'
  else:
    tokenizer = encoder_jax.load_tokenizer('minilm')
    encode_fn = lambda a, b=None: encoder_jax.tokenize(tokenizer, a, b, max_length=MAX_LENGTH)
    cfg, pretrained = encoder_jax.load_pretrained('minilm', dtype=args.dtype)
    ecfg, params = fit_heads(cfg, pretrained, splits, encode_fn, args.head_steps, num_labels)
    method = 'sweet'  # the same network as early_exit at inference
    source = f'pretrained MiniLM, frozen; heads fit for {args.head_steps} steps'
  params = jax.device_put(params)  # numpy leaves would be copied in at every call
  cal = splits.calibration.subset(np.arange(min(512, len(splits.calibration))))
  cal_logits, _ = all_exit_logits(cfg, ecfg, params, method, batches(cal, encode_fn, 64))
  return Model(cfg, ecfg, params, method, encode_fn, calibration.fit_temperatures(cal_logits, cal.labels), source)


def time_point(engine, pt, batch_list, real, modes, args, tolerance):
  """Times one threshold: -> (median-ratio speedups, best-of-repeats speedups, ties or None where an engine
  disagreed beyond them, host round trips per 1,000 examples), per mode; and the full model's times.

  Each repeat times the full model, then every mode, back to back (a noisy neighbour on the shared machine
  slows neighbouring runs alike); the speedup is the ratio of the medians over the repeats, which a burst of
  load in a minority of the runs does not move. Best-of-repeats ratios (timeit's estimator: load only ever
  slows a run down) go to the JSON as well.
  """
  times = {m: [] for m in ('full',) + modes}
  ties, trips = {m: 0 for m in modes}, {}
  for r in range(args.repeats):
    start = time.perf_counter()
    engine.run_full(batch_list)
    times['full'].append(time.perf_counter() - start)
    for m in modes:
      if m == 'calm' and r >= args.calm_repeats:
        continue
      start = time.perf_counter()
      res = engine.run(batch_list, pt.threshold, mode=m)
      times[m].append(time.perf_counter() - start)
      trips[m] = res.stats['host_round_trips_per_1000']
      try:  # every real example answered, with the sweep's exit and prediction up to ties
        tied = sweet_eval.check_engine(res, real, pt.exit_index, pt.predictions, pt.threshold, borderline=tolerance)
        ties[m] = None if ties[m] is None else max(ties[m], tied)
      except RuntimeError as e:
        print(e, flush=True)
        ties[m] = None
  speed = {m: float(np.median(times['full']) / np.median(times[m])) for m in modes}
  best = {m: float(np.min(times['full']) / np.min(times[m])) for m in modes}
  return speed, best, ties, trips, times['full']


def bench_batch_size(batch_size, args, model: Model, splits, peak, device_kind):
  """Every threshold at one batch size: prints its rows, -> its entry of the results JSON."""
  cfg, ecfg, params, method, encode_fn, temps, _ = model
  n = args.examples_batch1 if batch_size == 1 else args.examples_small if batch_size < 16 else args.examples
  evaluation = splits.eval.subset(np.arange(min(n, len(splits.eval))))
  batch_list = batches(evaluation, encode_fn, batch_size)
  logits, lengths = all_exit_logits(cfg, ecfg, params, method, batch_list)
  real = np.concatenate([b['example_mask'] > 0 for b in batch_list])  # padding rows of a last partial batch
  labels = evaluation.labels
  points = curves.sweep(logits, labels, temperatures=temps, encoder_config=cfg, exit_config=ecfg,
                        method=method, seq_lengths=lengths,
                        thresholds=[float(t) for t in args.thresholds.split(',') if t] or None)
  engine = adaptive.AdaptiveEngine(cfg, ecfg, params, method=method, temperatures=temps, batch_size=batch_size)
  modes = tuple(m for m in args.modes.split(',') if m)
  compile_s = engine.warmup({b['input_ids'].shape[1] for b in batch_list}, modes=modes)
  tolerance = curves.tie_tolerance(cfg.dtype)
  print(f'\nbatch {batch_size}: {len(labels)} examples in {len(batch_list)} batches, seq lengths '
        f'{sorted({b["input_ids"].shape[1] for b in batch_list})}; warm-up (compilation) {compile_s:.0f}s; '
        f'tie tolerance {tolerance:g}\n{"batch":>5} {"thresh":>6} {"acc":>6} {"layers":>6} {"flops":>6} '
        f'{"ideal":>6} | ' + ' | '.join(f'{m:>11} {"ratio":>5} {"trips":>5} {"ties":>4}' for m in modes), flush=True)
  out_rows, full_times = [], []
  for pt in points:
    near = curves.borderline(logits, temps, pt.threshold, 'confidence', tolerance)  # curves.sweep's rule
    speed, best, ties, trips, full_t = time_point(engine, pt, batch_list, real, modes, args, near)
    full_times += full_t
    ideal = 1.0 / pt.flops_fraction
    cell = lambda m: (f'{speed[m]:11.2f} {speed[m] / ideal:5.2f} {trips[m]:5.1f} '
                      f'{"NO" if ties[m] is None else ties[m]:>4}')
    print(f'{batch_size:5d} {pt.threshold:6.3f} {pt.accuracy:6.3f} {pt.layer_fraction:6.3f} '
          f'{pt.flops_fraction:6.3f} {ideal:6.2f} | ' + ' | '.join(cell(m) for m in modes), flush=True)
    out_rows.append({**pt.summary(), 'ideal_speedup': ideal, **{f'{m}_speedup': s for m, s in speed.items()},
                     **{f'{m}_best_of_speedup': s for m, s in best.items()},
                     **{f'{m}_host_round_trips_per_1000': t for m, t in trips.items()},
                     **{f'{m}_engine_ties': t for m, t in ties.items()},
                     'agree': all(t is not None for t in ties.values())})
  full = float(np.median(full_times))
  # Model FLOPs of the timed examples through the full model (sweet_jax.curves' count; padding rows of a last
  # partial batch are not counted); an engine run does flops_fraction of them.
  full_flops = float(sum(curves.full_model_flops(cfg, ecfg, int(seq)) for seq in lengths))
  mfu = f'; MFU not reported (peak of {device_kind!r} unknown)'
  if peak:
    for row in out_rows:
      for m in modes:
        row[f'{m}_mfu'] = full_flops * row['flops_fraction'] * row[f'{m}_speedup'] / full / peak
    mfu = f'; MFU {full_flops / full / peak:.1%} of {peak / 1e12:.0f} TFLOP/s ({device_kind}), engines: ' + ', '.join(
        f'{m} {min(r[f"{m}_mfu"] for r in out_rows):.1%}-{max(r[f"{m}_mfu"] for r in out_rows):.1%}' for m in modes)
  print(f'full model: median {full:.2f}s per pass ({1e3 * full / len(labels):.1f} ms per example, '
        f'{full_flops / full / 1e9:.1f} GFLOP/s){mfu}', flush=True)
  return {'examples': len(labels), 'full_model_s': full, 'compile_s': compile_s, 'full_model_flops': full_flops,
          'full_model_mfu': full_flops / full / peak if peak else None, 'modes': list(modes), 'points': out_rows}


def print_goals(results, repeats):
  """The goal lines per batch size: the worst measured / ideal over thresholds with layer_fraction <= 0.7 (median
  and best-of estimators), the ratio at threshold 1.0, and round trips per 1,000 examples."""
  for batch_size, res in results['batch_sizes'].items():
    modes, pts = res['modes'], res['points']
    fast = [r for r in pts if r['layer_fraction'] <= 0.7]
    last = max(pts, key=lambda r: r['threshold'])
    fmt = lambda key, rows, f: ', '.join(f'{m} {f(r[f"{m}_{key}"] / r["ideal_speedup"] for r in rows):.2f}'
                                         for m in modes)
    print(f'\nbatch {batch_size}: worst measured/ideal over thresholds with layer_fraction <= 0.7 (medians): '
          f'{fmt("speedup", fast, min) if fast else "-"}; best-of-{repeats}: '
          f'{fmt("best_of_speedup", fast, min) if fast else "-"}')
    print(f'batch {batch_size}: at threshold {last["threshold"]:g} (layer_fraction {last["layer_fraction"]:.3f}) '
          f'measured/ideal {fmt("speedup", [last], min)}; best-of: {fmt("best_of_speedup", [last], min)}')
    trips = {m: max(r[f'{m}_host_round_trips_per_1000'] for r in pts) for m in modes}
    print(f'batch {batch_size}: host round trips per 1,000 examples (most over thresholds): ' +
          ', '.join(f'{m} {t:.1f}' for m, t in trips.items()))


def main():
  args = parse_args()
  print(f'machine: {machine()}', flush=True)
  config = load_config(args.config) if args.workdir else None
  # A trained workdir is timed on its own eval split (its config's data seed), never on its training data.
  splits = data.load_splits(config.data if config else data.base_config())
  t0 = time.perf_counter()
  model = load_model(args, config, splits)
  print(f'model: {model.source}; exits {model.ecfg.exit_layers}; temperatures {np.round(model.temps, 3).tolist()} '
        f'({time.perf_counter() - t0:.0f}s)', flush=True)
  peak, device_kind = peak_flops(args.dtype)
  results = {'machine': machine(), 'model': model.source, 'dtype': args.dtype, 'device_kind': device_kind,
             'peak_flops': peak, 'temperatures': model.temps.tolist(), 'batch_sizes': {}}
  for batch_size in [int(b) for b in args.batch_sizes.split(',')]:
    results['batch_sizes'][batch_size] = bench_batch_size(batch_size, args, model, splits, peak, device_kind)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
  print_goals(results, args.repeats)


if __name__ == '__main__':
  main()
