"""Impossible settings refused before any work, each error naming its config field.

Without these checks a zero max_seq_length crashes deep inside numpy or the tokenizer, zero epochs save an
untrained model and a results.json that looks real, and a negative learning rate trains uphill and exits 0.
"""

from __future__ import annotations

import numbers
from typing import Any

from pipeline.config_fields import get as _get


class ConfigError(ValueError):
  """A config field with an impossible value; the message names every such field."""


def _whole(minimum: int, why: str):
  def rule(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
      return f'must be a whole number >= {minimum} ({why}), got {value!r}'
  return rule


def _positive(why: str):
  def rule(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
      return f'must be > 0 ({why}), got {value!r}'
  return rule


_BATCH = 'examples per step'
# (section, field, rule): a field absent from the config is not checked (PAPA configs have no train.num_epochs).
RULES = (
    ('train', 'num_epochs', _whole(1, '0 epochs would save the untrained model as a result')),
    ('train', 'learning_rate', _positive('a negative rate trains uphill')),
    ('train', 'batch_size', _whole(1, _BATCH)),
    ('eval', 'batch_size', _whole(1, _BATCH)),
    ('papa', 'num_epochs', _whole(1, 'the probe head must train')),
    ('papa', 'learning_rate', _positive('a negative rate trains uphill')),
    ('papa', 'batch_size', _whole(1, _BATCH)),
    ('papa', 'eval_batch_size', _whole(1, _BATCH)),
)


def _min_seq_length(config) -> int:
  """[CLS] text [SEP], or [CLS] a [SEP] b [SEP] for pairs: special tokens plus one token of each text."""
  fields = _get(_get(config, 'data'), 'text_fields', ('text',))
  return 5 if not isinstance(fields, str) and len(tuple(fields)) == 2 else 3


def problems(config) -> list[str]:
  """'section.field: what is wrong' for every impossible field of an experiment config."""
  out = []
  for section, field, rule in RULES:
    value = _get(_get(config, section), field)
    if value is not None and (why := rule(value)):
      out.append(f'{section}.{field} {why}')
  buckets = _get(_get(config, 'data'), 'length_buckets')
  if buckets is not None and not (isinstance(buckets, (tuple, list)) and buckets
                                  and all(_whole(1, '')(b) is None for b in buckets)):
    out.append(f'data.length_buckets must be a non-empty tuple of whole numbers >= 1 (padded lengths), '
               f'got {buckets!r}')
  length = _get(_get(config, 'data'), 'max_seq_length')
  if length is not None:
    need = _min_seq_length(config)
    if why := _whole(need, 'room for [CLS], [SEP] and one token of each text')(length):
      out.append(f'data.max_seq_length {why}')
  return out


def validate(config: Any) -> None:
  """Raises ConfigError naming every impossible field (see RULES), before any data or model is loaded."""
  found = problems(config)
  if found:
    raise ConfigError('Impossible config: ' + '; '.join(found) + '.')
