"""PAPA end to end: estimate constant attention, rank the heads, probe with k of them constant.

  python train.py --config configs/papa_demo.py --workdir runs/papa_demo    # calls run(config, workdir)
  python eval.py  --config configs/papa_demo.py --workdir runs/papa_demo    # calls rescore(config, workdir)
  python -m drivers.papa_experiment --config configs/papa_demo.py --workdir runs/papa_demo [--rescore]

Stages, all under WORKDIR/papa/; each is skipped when its output exists and records this run's fingerprint
(pipeline.fingerprint: data files, fields, seeds, split sizes, model) and recipe, so rerunning resumes; a stage
made from other data, seeds or model is recomputed, and the log says which fields differ:
  1. averages.npz   masked average attention of the pretrained encoder over the train split (or a seeded
                    random estimate_max_examples of it; raising that later extends the saved sums);
                    averages.json records the fingerprint and order seed; the file, its encoder. A file about
                    to be extended or recomputed is renamed to averages-<sha256[:12]>.npz, never rewritten.
  2. ranking.json   the lambda-gated run: lambdas per head and the global ranking (ascending lambda).
  3. probe_k{k}.npz / .json   for each k in config.papa.ks: the probe head trained on the frozen encoder with
                    the first k ranked heads constant, and its eval accuracy per epoch.
  4. results.json / results.md   accuracy per k and the relative drop (baseline - acc) / baseline from k=0;
                    the layout slots no estimate example occupied and the eval tokens that land in them
                    (slot_coverage); speed.json (once): cached-feature training against running the encoder
                    every step; predictions.npz: per k, each eval example's predicted label and confidence
                    (drivers.predictions), written when every probe was trained or rescored in this run.
The reported accuracy is the last epoch's (no selection on the eval split); the best epoch's is also kept.
Every accuracy, after each training epoch and when eval.py rescores, comes from one function (_evaluator);
papa.feature_cache 'memory', 'disk' and 'none' give the same accuracies with papa.cache_dtype 'float32'
(the default 'float16' halves the cache at ~5e-4 relative error in the features).

This module runs the stages and reports; papa_setup.py holds what they share (setup, token batches, feature
caches, the evaluator).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from papa_jax import averages, probe, ranking
from drivers import predictions
from drivers.papa_setup import (_cache_dtype, _cache_path, _evaluator, _log, _probe_config, _remove_disk_caches, _setup,
                        _Setup, _Tokens, _tokens, cache_mode)
from pipeline import fingerprint, reporting
from pipeline.config_fields import get as _get


# --------------------------------------------------------------------------------- 1. attention averages

def estimate(s: _Setup) -> averages.AttentionSums:
  """Stage 1: averages.npz (loaded, extended or computed)."""
  path = s.papa_dir / 'averages.npz'
  train = s.splits.train
  target = min(int(_get(s.p, 'estimate_max_examples', 0)) or len(train), len(train))
  # One fixed seeded order: an estimate on n examples uses its first n; extending it takes the next ones.
  order = np.random.default_rng([s.seed, 101]).permutation(len(train))
  est = None
  made_from = {'fingerprint': s.fingerprint, 'order_seed': s.seed}  # what the saved sums must come from
  record = s.papa_dir / 'averages.json'
  diffs = fingerprint.differences(json.loads(record.read_text()) if record.exists() else {}, made_from)
  if path.exists() and diffs:
    _log(f'averages: {path} was estimated from other data, seeds or model ({"; ".join(diffs[:5])}'
         f'{"; ..." if len(diffs) > 5 else ""}): recomputing it')
  elif path.exists():
    est = averages.load(path)
    if est.num_examples >= target:
      _log(f'averages: reusing {path} ({est.num_examples} examples)')
      return est
    _log(f'averages: extending {path} from {est.num_examples} to {target} examples')
  start = est.num_examples if est is not None else 0
  t0 = time.perf_counter()
  subset = train.subset(order[start:target])
  bs = int(s.p.eval_batch_size)
  est = averages.accumulate(s.enc_config, s.enc_params, s.batches(subset, bs), est,
                            model=str(s.config.model.checkpoint), length=s.length)
  if reporting.is_writer():
    _keep_aside(path)
    averages.save(path, est)
    record.write_text(json.dumps(made_from, indent=1) + '\n')  # after the sums: a crash between means recompute
  _log(f'averages: {est.num_examples} examples in {time.perf_counter() - t0:.1f} s -> {path}')
  return est


def _keep_aside(path) -> None:
  """Renames an averages file about to be replaced to averages-<sha256[:12]>.npz: a SWEET model trained with
  it keeps its constants, under the digest its run identity records."""
  if not path.exists():
    return
  kept = path.with_name(f'{path.stem}-{fingerprint.file_identity(str(path))["sha256"][:12]}{path.suffix}')
  if kept.exists():
    path.unlink()  # the same bytes are already kept under that name
  else:
    path.rename(kept)
  _log(f'averages: the previous {path.name} is kept as {kept} (a model trained with it still finds it)')


# ------------------------------------------------------------------------------------------ 2. ranking

def _ranking_recipe(s: _Setup) -> dict:
  """What the ranking run depends on besides the averages; a saved run with another recipe is redone."""
  p = s.p
  return {'learning_rate': float(_get(p, 'ranking_learning_rate', 0.0)) or float(p.learning_rate),
          'epochs': int(p.ranking_epochs), 'max_steps': int(_get(p, 'ranking_max_steps', 0)),
          'max_examples': int(_get(p, 'ranking_max_examples', 0)), 'batch_size': int(p.batch_size),
          'dropout': float(p.dropout), 'seed': s.seed, 'num_train': len(s.splits.train),
          'fingerprint': s.fingerprint}


def _probe_recipe(s: _Setup) -> dict:
  """What a probe depends on besides its constant heads and the averages."""
  p = s.p
  return {'learning_rate': float(p.learning_rate), 'epochs': int(p.num_epochs), 'batch_size': int(p.batch_size),
          'dropout': float(p.dropout), 'seed': s.seed, 'num_train': len(s.splits.train),
          'fingerprint': s.fingerprint}


def rank(s: _Setup, constants: np.ndarray, est_examples: int) -> list[tuple[int, int]]:
  """Stage 2: ranking.json (loaded or computed): heads by learned lambda, ascending. A saved ranking made
  with averages over another number of examples (the estimate was extended since) is redone."""
  path = s.papa_dir / 'ranking.json'
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get('estimate_examples') == est_examples and saved.get('recipe') == _ranking_recipe(s):
      _log(f'ranking: reusing {path}')
      return [tuple(x) for x in saved['ranking']]
    diffs = fingerprint.differences(saved.get('recipe') or {}, _ranking_recipe(s))
    _log(f'ranking: {path} was made with other averages or settings ({"; ".join(diffs[:5]) or "averages"}): '
         'redoing it')
  train = s.splits.train
  n = min(int(_get(s.p, 'ranking_max_examples', 0)) or len(train), len(train))
  subset = train.subset(np.sort(np.random.default_rng([s.seed, 102]).permutation(len(train))[:n]))
  lr = float(_get(s.p, 'ranking_learning_rate', 0.0)) or float(s.p.learning_rate)
  max_steps = int(_get(s.p, 'ranking_max_steps', 0)) or None
  bs = int(s.p.batch_size)
  _log(f'ranking: every head mixed, {n} examples, {s.p.ranking_epochs} epochs'
       f'{f", at most {max_steps} steps" if max_steps else ""}, batch {bs}, lr {lr}')
  t0 = time.perf_counter()
  lambdas, _, history = ranking.train_lambdas(
      s.enc_config, s.enc_params, constants, s.num_labels,
      lambda epoch: s.batches(subset, bs, epoch=epoch, shuffle=True), length=s.length, learning_rate=lr,
      num_epochs=int(s.p.ranking_epochs), max_steps=max_steps, dropout=float(s.p.dropout), seed=s.seed,
      log=lambda m: _log(f'ranking: {m}'))
  order = ranking.rank_heads(lambdas)
  seconds = time.perf_counter() - t0
  reporting.write_json(path, {
      'model': str(s.config.model.checkpoint), 'length': s.length, 'estimate_examples': est_examples,
      'recipe': _ranking_recipe(s), 'num_examples': n, 'learning_rate': lr,
      'steps': history[-1]['steps'] if history else 0, 'seconds': seconds,
      'lambdas': lambdas.tolist(),  # [layers][heads]; sigmoid(lambda) is the weight of dynamic attention
      'ranking': [list(h) for h in order],  # ascending lambda: the first k are made constant
      'history': history})
  _log(f'ranking: done in {seconds:.1f} s; lambdas in [{lambdas.min():.3f}, {lambdas.max():.3f}]; '
       f'most constant-leaning heads {order[:5]}')
  return order


# -------------------------------------------------------------------------------------------- 3. probes

def _resolved_ks(s: _Setup) -> list[tuple[int, str]]:
  """(k, how the config named it) for each distinct k, in config order."""
  out, seen = [], set()
  for spec in _get(s.p, 'ks', (0, 'half', 'all')):
    k = ranking.resolve_k(spec, s.total_heads)
    if k not in seen:
      seen.add(k)
      out.append((k, str(spec)))
  return out


def _saved_probe(s: _Setup, k: int, heads, est_examples: int) -> dict | None:
  """probe_k{k}.json when it and its .npz exist and were made with these heads and this estimate."""
  json_path, params_path = s.papa_dir / f'probe_k{k}.json', s.papa_dir / f'probe_k{k}.npz'
  if not (json_path.exists() and params_path.exists()):
    return None
  info = json.loads(json_path.read_text())
  if (info.get('estimate_examples') != est_examples or [tuple(h) for h in info['heads']] != list(heads)
      or info.get('recipe') != _probe_recipe(s)):
    return None  # trained with other constants (the estimate was extended since), heads or settings: stale
  return info


def train_probe(s: _Setup, constants, order, k: int, label: str, mode: str, train_tokens, eval_tokens,
                measure_speed: bool, est_examples: int) -> dict:
  """Stage 3 for one k: probe_k{k}.npz and probe_k{k}.json (loaded when both exist and are current)."""
  json_path, params_path = s.papa_dir / f'probe_k{k}.json', s.papa_dir / f'probe_k{k}.npz'
  heads = ranking.constant_heads(order, k)
  saved = _saved_probe(s, k, heads, est_examples)
  if saved is not None:
    _log(f'probe k={k}: reusing {json_path}')
    saved['label'] = label
    return saved
  if json_path.exists():
    _log(f'probe k={k}: {json_path} was trained with other constants, heads or settings: redoing it')
  cfg_k = _probe_config(s, heads)
  consts = jax.device_put(np.asarray(constants, np.float32))
  p, dropout, bs = s.p, float(s.p.dropout), int(s.p.batch_size)
  head = probe.init_head(jax.random.key(s.seed), s.enc_config.num_layers, s.enc_config.hidden_size, s.length,
                         s.num_labels)
  info = {'k': k, 'label': label, 'heads': [list(h) for h in heads], 'feature_cache': mode,
          'estimate_examples': est_examples, 'recipe': _probe_recipe(s)}
  _log(f'probe k={k} ({label}): {len(heads)} of {s.total_heads} heads constant')

  t0 = time.perf_counter()
  evaluate_head, eval_cache = _evaluator(s, cfg_k, consts, mode, eval_tokens)
  eval_fn = lambda prm, e: {'eval_accuracy': evaluate_head(prm)}
  if mode == 'none':
    loss_fn, _ = probe.online_fns(cfg_k, dropout)
    frozen = {'encoder': s.enc_params, 'constants': consts}
    epoch_batches = lambda e: s.batches(s.splits.train, bs, epoch=e, shuffle=True)
    train_cache = None
  else:
    train_cache = probe.cache_features(cfg_k, s.enc_params, train_tokens.batches, constants=consts,
                                       path=_cache_path(s, mode, 'train'), dtype=_cache_dtype(s))
    _log(f'probe k={k}: cached {len(train_cache)} + {len(eval_cache)} examples '
         f'({(train_cache.nbytes + eval_cache.nbytes) / 2**20:.0f} MiB, {train_cache.positions.size} positions) '
         f'in {time.perf_counter() - t0:.1f} s')
    loss_fn, _ = probe.cached_fns(dropout)
    frozen = {'positions': jax.device_put(train_cache.positions)}
    epoch_batches = lambda e: train_cache.batches(bs, seed=s.seed, epoch=e, shuffle=True)
  cache_seconds = time.perf_counter() - t0

  t0 = time.perf_counter()
  head, history = probe.fit(head, frozen, loss_fn, epoch_batches, learning_rate=float(p.learning_rate),
                            num_epochs=int(p.num_epochs), seed=s.seed, evaluate=eval_fn,
                            log=lambda m: _log(f'probe k={k}: {m}'))
  train_seconds = time.perf_counter() - t0
  accs = [row['eval_accuracy'] for row in history]
  info.update({'accuracy': accs[-1], 'best_accuracy': max(accs), 'best_epoch': int(np.argmax(accs)),
               'steps': history[-1]['steps'], 'cache_seconds': cache_seconds, 'train_seconds': train_seconds,
               'num_train': len(s.splits.train), 'num_eval': len(s.splits.eval), 'history': history})
  if measure_speed and train_cache is not None:
    reporting.write_json(s.papa_dir / 'speed.json', _measure_speed(s, cfg_k, consts, head, train_cache, info))
  if reporting.is_writer():
    probe.save_params(params_path, head, k=k, heads=np.asarray(heads, np.int32).reshape(-1, 2),
                      model=str(s.config.model.checkpoint), length=s.length)
  reporting.write_json(json_path, info)
  info['outputs'] = evaluate_head.last  # the last epoch's per-example outputs, for predictions.npz (not JSON)
  _log(f'probe k={k}: eval accuracy {info["accuracy"]:.4f} (best {info["best_accuracy"]:.4f} at epoch '
       f'{info["best_epoch"]}); cache {cache_seconds:.1f} s, training {train_seconds:.1f} s')
  return info


def _measure_speed(s: _Setup, cfg_k, consts, head, train_cache, info) -> dict:
  """Seconds per training step on cached features against running the encoder every step (same batch),
  and the whole training run both ways (online estimated as steps x its step time)."""
  n = int(_get(s.p, 'speed_steps', 5))
  bs = int(s.p.batch_size)
  online_loss, _ = probe.online_fns(cfg_k, float(s.p.dropout))
  cached_loss, _ = probe.cached_fns(float(s.p.dropout))
  token_batches = [b for _, b in zip(range(n + 1), s.batches(s.splits.train, bs, epoch=0, shuffle=True))]
  online = probe.time_steps(head, {'encoder': s.enc_params, 'constants': consts}, online_loss, token_batches)
  cached_batches = [b for _, b in zip(range(n + 1), train_cache.batches(bs, seed=s.seed, shuffle=True))]
  cached = probe.time_steps(head, {'positions': jax.device_put(train_cache.positions)}, cached_loss, cached_batches)
  steps = info['steps']
  cached_total = info['cache_seconds'] + info['train_seconds']
  online_total = online * steps
  out = {'k': info['k'], 'batch_size': bs, 'steps': steps, 'online_step_seconds': online,
         'cached_step_seconds': cached, 'step_speedup': online / cached,
         'cached_run_seconds': cached_total, 'online_run_seconds_estimate': online_total,
         'run_speedup': online_total / cached_total,
         'note': 'cached run = one encoder pass over train + eval, then head-only steps (evaluation every '
                 'epoch included); online estimate = steps x online step time (evaluation not included)'}
  _log(f'speed: online step {online * 1e3:.1f} ms, cached step {cached * 1e3:.2f} ms ({out["step_speedup"]:.0f}x); '
       f'whole run {cached_total:.0f} s cached vs ~{online_total:.0f} s online ({out["run_speedup"]:.1f}x)')
  return out


# ------------------------------------------------------------------------------------------- 4. results

def _results(s: _Setup, est: averages.AttentionSums, per_k: list[dict], eval_tokens: _Tokens,
             rescored: bool) -> dict:
  base = next((r['accuracy'] for r in per_k if r['k'] == 0), None)
  rows = []
  for r in per_k:
    drop = None if base is None or base == 0 else (base - r['accuracy']) / base
    rows.append({'k': r['k'], 'label': r['label'], 'num_constant_heads': len(r['heads']),
                 'fraction_constant': len(r['heads']) / s.total_heads, 'accuracy': r['accuracy'],
                 'relative_drop': drop, 'best_accuracy': r.get('best_accuracy')})
  speed_path = s.papa_dir / 'speed.json'
  d = s.config.data
  return {
      'method': 'papa', 'model': str(s.config.model.checkpoint), 'length': s.length,
      'data': {'source': d.source, 'name': d.get('name', ''), 'subset': d.get('subset', ''),
               'eval_split': d.get('eval_split', ''), 'num_train': len(s.splits.train),
               'num_eval': len(s.splits.eval), 'label_names': list(s.splits.train.label_names)},
      'num_heads': s.total_heads, 'estimate_examples': est.num_examples, 'fingerprint': s.fingerprint,
      'code': fingerprint.code_provenance(),
      'slot_coverage': averages.slot_coverage(est, eval_tokens.masks),
      'baseline_accuracy': base, 'results': rows, 'rescored': rescored,
      'speed': json.loads(speed_path.read_text()) if speed_path.exists() else None,
  }


def _markdown(res: dict) -> str:
  lines = [f'PAPA probe, {res["model"]} (frozen), {res["data"]["source"]} {res["data"]["subset"]}'.rstrip()
           + f': {res["data"]["num_train"]} train / {res["data"]["num_eval"]} eval examples, length '
           f'{res["length"]}, averages over {res["estimate_examples"]} examples.', '']
  rows = []
  for r in res['results']:
    name = f'{r["num_constant_heads"]} ({r["label"]})' if r['label'] != str(r['k']) else str(r['k'])
    drop = 'n/a' if r['relative_drop'] is None else f'{100 * r["relative_drop"]:.1f}%'
    drop = '(baseline)' if r['k'] == 0 else drop
    rows.append([name, f'{100 * r["fraction_constant"]:.0f}%', f'{r["accuracy"]:.4f}', drop])
  lines.append(reporting.markdown_table(['constant heads', 'of all', 'eval accuracy', 'relative drop'],
                                        rows).rstrip('\n'))
  cov = res['slot_coverage']
  examples = cov['eval_examples_with_tokens_in_unoccupied_slots']
  lines += ['', f'{cov["num_unoccupied_slots"]} of {res["length"]} layout slots were occupied by no estimate example; '
            f'{cov["eval_tokens_in_unoccupied_slots"]} eval tokens (in {examples} examples) land in them, where '
            'constant heads give them no context.']
  sp = res.get('speed')
  if sp:
    lines += ['', f'Probe training on cached features: {sp["cached_step_seconds"] * 1e3:.2f} ms per step against '
              f'{sp["online_step_seconds"] * 1e3:.0f} ms running the encoder every step '
              f'({sp["step_speedup"]:.0f}x per step); a whole probe run {sp["cached_run_seconds"]:.0f} s including '
              f'the one encoder pass, against ~{sp["online_run_seconds_estimate"]:.0f} s ({sp["run_speedup"]:.1f}x).']
  return '\n'.join(lines) + '\n'


def _write_results(s: _Setup, est, per_k, eval_tokens: _Tokens, rescored: bool) -> dict:
  res = _results(s, est, per_k, eval_tokens, rescored)
  reporting.write_json(s.papa_dir / 'results.json', res)
  if reporting.is_writer():  # per-example outputs when every probe was scored in this process (drivers.predictions)
    predictions.save_papa(s.papa_dir, per_k, s.splits.eval)
  md = _markdown(res)
  if reporting.is_writer():
    (s.papa_dir / 'results.md').write_text(md)
  print(md, flush=True)
  return res


# ------------------------------------------------------------------------------------------ entry points

def run(config, workdir) -> dict:
  """Every stage; stages whose outputs exist in workdir/papa are reused. Returns results.json's dict."""
  t0 = time.perf_counter()
  s = _setup(config, workdir)
  est = estimate(s)
  constants = est.averages
  order = rank(s, constants, est.num_examples)
  ks = _resolved_ks(s)
  todo = [k for k, _ in ks if _saved_probe(s, k, ranking.constant_heads(order, k), est.num_examples) is None]
  eval_tokens = _tokens(s, s.splits.eval)  # evaluation and the slot coverage of the results read it
  train_tokens, mode = None, 'none'
  if todo:
    train_tokens = _tokens(s, s.splits.train)
    mode = cache_mode(s, train_tokens, eval_tokens)
  measure = bool(_get(s.p, 'measure_speed', True)) and not (s.papa_dir / 'speed.json').exists()
  per_k = []
  for k, label in ks:
    per_k.append(train_probe(s, constants, order, k, label, mode, train_tokens, eval_tokens, measure,
                             est.num_examples))
    measure = measure and not (s.papa_dir / 'speed.json').exists()  # once, on the first k trained with a cache
  _remove_disk_caches(s)
  res = _write_results(s, est, per_k, eval_tokens, rescored=False)
  _log(f'done in {time.perf_counter() - t0:.0f} s; results in {s.papa_dir}')
  return res


def rescore(config, workdir) -> dict:
  """Re-evaluates the saved probe heads on the configured eval split and rewrites results.json/.md."""
  s = _setup(config, workdir)
  missing = [p for p in ('averages.npz', 'ranking.json') if not (s.papa_dir / p).exists()]
  if missing:
    raise FileNotFoundError(f'{s.papa_dir} lacks {missing}; run train.py with this config and workdir first.')
  est = averages.load(s.papa_dir / 'averages.npz')
  constants = jax.device_put(est.averages)
  saved_ranking = json.loads((s.papa_dir / 'ranking.json').read_text())
  fingerprint.check_for_eval(saved_ranking.get('recipe', {}).get('fingerprint'), s.fingerprint, str(s.papa_dir))
  order = [tuple(x) for x in saved_ranking['ranking']]
  eval_tokens = _tokens(s, s.splits.eval)
  mode = cache_mode(s, _Tokens([], np.zeros((0, s.length), bool)), eval_tokens)
  per_k = []
  for k, label in _resolved_ks(s):
    params_path, json_path = s.papa_dir / f'probe_k{k}.npz', s.papa_dir / f'probe_k{k}.json'
    if not params_path.exists():
      raise FileNotFoundError(f'{params_path} is missing; run train.py with this config and workdir first.')
    head, meta = probe.load_params(params_path)
    heads = [tuple(int(x) for x in h) for h in np.asarray(meta['heads']).reshape(-1, 2)]
    if heads != ranking.constant_heads(order, k):
      raise ValueError(f'{params_path} was trained with other constant heads than ranking.json gives for k={k}.')
    info = json.loads(json_path.read_text()) if json_path.exists() else {'k': k, 'heads': [list(h) for h in heads]}
    if info.get('estimate_examples', est.num_examples) != est.num_examples:
      raise ValueError(f'{params_path} was trained with averages over {info["estimate_examples"]} examples; '
                       f'averages.npz now holds {est.num_examples}. Rerun train.py to retrain it.')
    info['label'] = label
    info['trained_accuracy'] = info.get('accuracy')
    evaluate_head, _ = _evaluator(s, _probe_config(s, heads), constants, mode, eval_tokens)
    info['accuracy'] = evaluate_head(head)
    info['outputs'] = evaluate_head.last
    _log(f'rescore k={k}: eval accuracy {info["accuracy"]:.4f} (at training: {info["trained_accuracy"]})')
    per_k.append(info)
  _remove_disk_caches(s)
  return _write_results(s, est, per_k, eval_tokens, rescored=True)


def main(argv):
  del argv  # everything comes from flags
  from absl import flags
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  (rescore if flags.FLAGS.rescore else run)(config, workdir)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', 'configs/papa_demo.py', 'Experiment config file.')
  flags.DEFINE_string('workdir', 'runs/papa_demo', 'Output directory; stages found in WORKDIR/papa are reused.')
  flags.DEFINE_bool('rescore', False, 'Re-evaluate the saved probe heads instead of running the experiment.')
  app.run(main)
