"""Raw tables: local csv / tsv / jsonl / parquet files read into columns of python values, each row with the
line (or index) it came from, before any checks."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import re
from typing import Sequence

from pipeline.data.errors import BadConfigError, DataError, DataFileNotFoundError, EmptySplitError

FILE_EXTENSIONS = ('.csv', '.tsv', '.jsonl', '.json', '.parquet')

# Characters that show nothing: a text cell of only these (and whitespace) is empty. str.strip() keeps the
# zero-width ones (U+200B..U+200D, U+2060 word joiner, U+FEFF BOM, U+00AD soft hyphen, U+180E).
_BLANK = re.compile('[\\s\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e]*')


def is_blank(text: str) -> bool:
  """Whether a text cell shows nothing: empty, whitespace, or zero-width characters only."""
  return _BLANK.fullmatch(text) is not None


MISSING = object()  # public: the value of a field that a jsonl row lacks (readers tell it from None)


@dataclasses.dataclass
class _Table:
  """One split as read: column name -> python values, and where each row is in its file."""
  origin: str
  columns: dict[str, list]
  num_rows: int
  lines: list[int] | None = None  # 1-based line of each row in a text file; None: rows are 0-based indices
  class_names: tuple[str, ...] | None = None  # names of a declared ClassLabel on the label column
  all_columns: tuple[str, ...] | None = None  # every column, when only the needed ones were read
  # What pins a hub or tfds split beyond its name: {'revision', 'fingerprint'} (datasets) or {'version'}
  # (tfds); the run identity records it (pipeline.fingerprint). None for local files (hashed by content).
  version: dict | None = None

  def where(self, i: int) -> str:
    return f'line {self.lines[i]}' if self.lines is not None else f'row {i} (0-based)'


def decode_text(data: bytes, path, encodings: Sequence[str]) -> str:
  """Text in the first encoding that decodes it; an error naming the line where the last one failed.

  Public: drivers/predictor.py reads its input files with it, so they decode as the training data did.
  """
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
  columns = {name: [r.get(name, MISSING) for r in records] for name in names}
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
  text = decode_text(path.read_bytes(), path, ('utf-8-sig',))
  if ext == '.csv':
    return _read_delimited(path, text, ',')
  if ext == '.tsv':
    # GLUE's tsv files hold unbalanced quotes inside sentences; tabs never occur in a field, so no quoting.
    return _read_delimited(path, text, '\t', csv.QUOTE_NONE)
  return _read_jsonl(path, text)
