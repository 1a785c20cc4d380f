"""Helpers of the pipeline.data tests (test_data.py, test_data_corpora.py): config, file writers, traceable rows."""

import csv
import json

import numpy as np

from pipeline import data


def config(**overrides):
  cfg = data.base_config()
  cfg.calibration_size = 0.0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def write_csv(path, header, rows, delimiter=','):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f, delimiter=delimiter)
    w.writerow(header)
    w.writerows(rows)
  return path


def write_jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')
  return path


def numbered(n, labels=('neg', 'pos')):
  """n rows (text 'ex<i>', label) with unique texts, so any split or batch can be traced back to its rows."""
  return [(f'ex{i}', labels[i % len(labels)]) for i in range(n)]


def ids_of(ds):
  return sorted(int(t[2:]) for t in ds.texts[0])


def fake_encode(texts_a, texts_b):
  """Stands in for encoder_jax.tokenize: input_ids[:, 0] is the example number; seq is the longest text,
  so batches whose rows differ show different lengths (like a bucketing tokenizer)."""
  seq = max(len(t) for t in texts_a) + (0 if texts_b is None else 1)
  ids = np.zeros((len(texts_a), seq), np.int32)
  ids[:, 0] = [int(t[2:]) for t in texts_a]
  ones = np.ones_like(ids)
  return {'input_ids': ids, 'attention_mask': ones, 'token_type_ids': np.zeros_like(ids)}


def dataset(n, num_labels=3):
  return data.TextDataset(((tuple(f'ex{i}' for i in range(n))),), np.arange(n) % num_labels,
                          tuple(str(i) for i in range(num_labels)))
