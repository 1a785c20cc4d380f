"""Metrics jsonl, results json and progress bars; only process 0 writes."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np


def is_writer() -> bool:
  return jax.process_index() == 0


def to_jsonable(x: Any) -> Any:
  """numpy / jax scalars and arrays, tuples, ConfigDicts -> plain JSON types."""
  if hasattr(x, 'to_dict'):
    return to_jsonable(x.to_dict())
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(x).tolist())
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, float) and not np.isfinite(x):
    return str(x)
  return x


def write_json(path: str, obj: Any) -> None:
  """Atomic write (temp file + rename), so a crash never leaves half a results file."""
  if not is_writer():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(to_jsonable(obj), f, indent=2)
  os.replace(tmp, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table: a header row, its separator, one line per row (cells formatted with str)."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


class MetricWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if is_writer():
      os.makedirs(workdir, exist_ok=True)

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not is_writer():
      return
    row = {'step': int(step), 'split': split, 'time': time.time(), **to_jsonable(metrics)}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')


def progress(total: int, initial: int = 0, desc: str = 'train'):
  """A tqdm bar on process 0 (disabled elsewhere and when stderr is not a terminal and CI is set)."""
  from tqdm.auto import tqdm
  disable = not is_writer() or bool(os.environ.get('CI'))
  return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, mininterval=2.0)


def default_workdir(config_filename: str) -> str:
  """runs/<config file name without .py>: where train.py and eval.py work when --workdir is not given."""
  return os.path.join('runs', os.path.splitext(os.path.basename(config_filename))[0])
