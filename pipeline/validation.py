"""Impossible settings refused before any work, each error naming its config field.

Without these checks a zero max_seq_length crashes deep inside numpy or the tokenizer, zero epochs save an
untrained model and a results.json that looks real, and a negative learning rate trains uphill and exits 0.
"""

from __future__ import annotations

import math
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


def _real_in(low: float, high: float, why: str, *, low_open: bool = False, high_open: bool = True):
  """A finite number in [low, high) (or (low, high) with low_open, [low, high] without high_open). NaN and
  infinities fail every comparison or the finiteness check: an inf learning rate trains to NaN at once."""
  def rule(value):
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and (
        value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
      span = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
      return f'must be a finite number in {span} ({why}), got {value!r}'
  return rule


def _positive(why: str):
  return _real_in(0.0, math.inf, why, low_open=True)


def _non_negative(why: str):
  return _real_in(0.0, math.inf, why)


_BATCH = 'examples per step'
# (section, field, rule): a field absent from the config is not checked (PAPA configs have no train.num_epochs).
RULES = (
    ('train', 'num_epochs', _whole(1, '0 epochs would save the untrained model as a result')),
    ('train', 'learning_rate', _positive('a negative rate trains uphill')),
    ('train', 'adam_eps', _positive("Adam divides by sqrt(v) + eps: 0 or less divides by zero")),
    ('train', 'warmup_fraction', _real_in(0.0, 1.0, 'the share of steps spent warming up; 1 never trains at '
                                          'the full rate')),
    ('train', 'weight_decay', _non_negative('negative decay grows the weights')),
    ('train', 'grad_clip', _non_negative('0 turns clipping off; a negative norm has no meaning')),
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
  out += _batch_division(config)
  return out


def _batch_division(config) -> list[str]:
  """Batches are split over the mesh's data axis (devices / mesh.model_axis): each must divide evenly."""
  import jax
  if _get(config, 'method', '') == 'papa':
    return []  # PAPA's stages run on one device's batches, not over the mesh
  model_axis = _get(_get(config, 'mesh'), 'model_axis', 1)
  if not isinstance(model_axis, numbers.Integral) or model_axis < 1 or jax.device_count() % model_axis:
    return [f'mesh.model_axis must divide the {jax.device_count()} devices, got {model_axis!r}']
  data_axis = jax.device_count() // model_axis
  out = []
  for section, field in (('train', 'batch_size'), ('eval', 'batch_size')):
    value = _get(_get(config, section), field)
    if isinstance(value, numbers.Integral) and value > 0 and value % data_axis:
      out.append(f'{section}.{field} {value} must be a multiple of the {data_axis} devices of the data axis '
                 f'(jax.device_count() {jax.device_count()} / mesh.model_axis {model_axis}): each device takes an '
                 f'equal share of a batch')
  return out


def validate(config: Any) -> None:
  """Raises ConfigError naming every impossible field (see RULES), before any data or model is loaded."""
  found = problems(config)
  if found:
    raise ConfigError('Impossible config: ' + '; '.join(found) + '.')
