"""The data config: every field with its default, and the field checks that several modules share."""

from __future__ import annotations

import ml_collections

from encoder_jax import fetch as fetch_assets
from encoder_jax.tokenization import DEFAULT_BUCKETS
from pipeline.config_fields import get as _get
from pipeline.data.errors import BadConfigError

SOURCES = ('movie_reviews', 'tweets', 'bbc_news', 'files', 'hub', 'tfds')
# A fractional calibration_size is capped here: temperature fitting needs a few thousand examples at most,
# and every one held out is lost to training (10% of MNLI would be 39k). An integer size is not capped.
CALIBRATION_CAP = 2000

default_cache_dir = fetch_assets.default_cache_dir  # $XDG_CACHE_HOME/sweet_papa_jax or ~/.cache/sweet_papa_jax


def base_config() -> ml_collections.ConfigDict:
  """The data config with every field and its default (binary movie-review sentiment, offline after one fetch)."""
  c = ml_collections.ConfigDict()
  c.source = 'movie_reviews'  # one of SOURCES: 'movie_reviews' | 'tweets' | 'bbc_news' | 'files' | 'hub' | 'tfds'
  c.name = ''  # hub: dataset name ('glue') or a local directory; tfds: dataset name or a prepared builder dir
  c.subset = ''  # hub: dataset config ('mnli'); '' for none
  c.train_split = 'train'  # hub/tfds: the split trained on (calibration is carved out of it)
  c.eval_split = 'validation'  # hub/tfds: the scored split ('validation_matched' for MNLI); '' = carve eval
  c.train_path = ''  # files: the training file (.csv, .tsv, .jsonl/.json lines, .parquet)
  c.eval_path = ''  # files: the scored file; '' = carve eval_size examples out of train_path
  c.text_fields = ('text',)  # one column (single sentences) or two (pairs: ('premise', 'hypothesis'))
  c.label_field = 'label'  # the label column (the packaged corpora expose theirs as 'label')
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
  # Each batch pads to the smallest of these lengths that holds its longest example (at most max_seq_length):
  # every length is one more compiled program, and finer ones pad less (what they save on a data set:
  # experiments/README.md).
  c.length_buckets = DEFAULT_BUCKETS
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
