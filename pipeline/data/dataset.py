"""The checked values every source ends as: TextDataset (labelled texts) and Splits (train / calibration / eval)."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.data.errors import BadConfigError, DataError


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
  when calibration_size is 0). eval: the split that is scored. The three share label ids and are disjoint.
  versions: the source's revision or version of the train and eval splits, where it has one."""
  train: TextDataset
  calibration: TextDataset | None
  eval: TextDataset
  # 'train' / 'eval' -> what pins that hub or tfds split beyond its name (_Table.version); empty for files.
  versions: dict = dataclasses.field(default_factory=dict)

  def summary(self) -> dict[str, dict[str, int]]:
    """Split name -> {'examples': N, <label name>: count, ...}, for logs."""
    out = {}
    for name in ('train', 'calibration', 'eval'):
      ds = getattr(self, name)
      if ds is not None:
        out[name] = {'examples': len(ds), **ds.label_counts()}
    return out
