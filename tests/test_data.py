"""pipeline.data: every source on files the tests write in its own format, splits, batches, and the errors.
The packaged corpora (movie reviews, tweets) are in test_data_corpora.py. Nothing here touches the network.
"""

import functools
import math
import pathlib

import numpy as np
import pytest

from pipeline import data
from tests.data_helpers import config, write_csv, write_jsonl, numbered, ids_of, fake_encode, dataset


# ------------------------------------------------------------------------------------------------ local files


def test_csv_train_and_eval(tmp_path):
  train = write_csv(tmp_path / 'train.csv', ['text', 'label'],
                    [('a, quoted "one"', 'pos'), ('two\nlines', 'neg'), ('three', 'pos'), ('four', 'neu')])
  ev = write_csv(tmp_path / 'eval.csv', ['label', 'text'], [('neu', 'x'), ('pos', 'y')])
  s = data.load_splits(config(source='files', train_path=str(train), eval_path=str(ev)))
  assert s.train.label_names == ('neg', 'neu', 'pos')  # sorted label set of train
  assert s.train.texts == (('a, quoted "one"', 'two\nlines', 'three', 'four'),)
  np.testing.assert_array_equal(s.train.labels, [2, 0, 2, 1])
  np.testing.assert_array_equal(s.eval.labels, [1, 2])
  assert s.eval.label_names == s.train.label_names
  assert s.calibration is None
  assert s.train.labels.dtype == np.int32


def test_tsv_pairs_keep_quotes(tmp_path):
  # GLUE-style tsv: an unbalanced quote inside a sentence must not swallow the following lines.
  path = tmp_path / 'pairs.tsv'
  path.write_text('premise\thypothesis\tlabel\n"Quoted start\tplain\tentailment\nsecond\tother\tneutral\n'
                  'third\tmore\tcontradiction\n', encoding='utf-8')
  ev = tmp_path / 'dev.tsv'
  ev.write_text('premise\thypothesis\tlabel\nx\ty\tneutral\n', encoding='utf-8')
  s = data.load_splits(config(source='files', train_path=str(path), eval_path=str(ev),
                              text_fields=('premise', 'hypothesis')))
  assert s.train.texts == (('"Quoted start', 'second', 'third'), ('plain', 'other', 'more'))
  assert s.train.label_names == ('contradiction', 'entailment', 'neutral')
  assert s.eval.is_pair and s.eval.texts == (('x',), ('y',))


def test_jsonl_integer_labels_in_numeric_order(tmp_path):
  train = write_jsonl(tmp_path / 't.jsonl', [{'s': 'a', 'y': 10}, {'s': 'b', 'y': 2}, {'s': 'c', 'y': 2}])
  ev = write_jsonl(tmp_path / 'e.jsonl', [{'s': 'd', 'y': 10.0}, {'s': 'e', 'y': '2'}])
  s = data.load_splits(config(source='files', train_path=str(train), eval_path=str(ev), text_fields=('s',),
                              label_field='y'))
  assert s.train.label_names == ('2', '10')  # numeric, not string, order
  np.testing.assert_array_equal(s.train.labels, [1, 0, 0])
  np.testing.assert_array_equal(s.eval.labels, [1, 0])  # 10.0 and '2' are the classes 10 and 2


def test_parquet_plain_and_with_class_names(tmp_path):
  import datasets
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({'text': ['a', 'b', 'c', 'd', 'e'], 'label': [1, 0, 1, 1, 0]}), tmp_path / 'p.parquet')
  s = data.load_splits(config(source='files', train_path=str(tmp_path / 'p.parquet'), eval_size=2))
  assert s.train.label_names == ('0', '1')
  assert len(s.train) == 3 and len(s.eval) == 2
  # A parquet file written by the datasets library keeps its ClassLabel names in the schema metadata.
  features = datasets.Features({'text': datasets.Value('string'),
                                'label': datasets.ClassLabel(names=['neg', 'pos', 'unused'])})
  datasets.Dataset.from_dict({'text': ['a', 'b', 'c'], 'label': [1, 0, 1]}, features=features).to_parquet(
      str(tmp_path / 'named.parquet'))
  s = data.load_splits(config(source='files', train_path=str(tmp_path / 'named.parquet'),
                              eval_path=str(tmp_path / 'named.parquet')))
  assert s.train.label_names == ('neg', 'pos', 'unused')
  np.testing.assert_array_equal(s.eval.labels, [1, 0, 1])


def test_hub_source_on_local_dataset_dir(tmp_path):
  import datasets
  features = datasets.Features({'premise': datasets.Value('string'), 'hypothesis': datasets.Value('string'),
                                'idx': datasets.Value('int32'),
                                'label': datasets.ClassLabel(names=['entailment', 'neutral', 'contradiction'])})
  root = tmp_path / 'mnli_like'
  (root / 'data').mkdir(parents=True)
  for split, n in (('train', 7), ('validation_matched', 3)):
    rows = {'premise': [f'{split} p{i}' for i in range(n)], 'hypothesis': [f'h{i}' for i in range(n)],
            'idx': list(range(n)), 'label': [i % 3 for i in range(n)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(root / 'data' / f'{split}-00000-of-00001.parquet'))
  cfg = config(source='hub', name=str(root), eval_split='validation_matched', data_dir=str(tmp_path / 'hf'),
               text_fields=('premise', 'hypothesis'), calibration_size=2)
  s = data.load_splits(cfg)
  assert s.train.label_names == ('entailment', 'neutral', 'contradiction')
  assert len(s.train) == 5 and len(s.calibration) == 2 and len(s.eval) == 3
  assert s.eval.texts[0] == ('validation_matched p0', 'validation_matched p1', 'validation_matched p2')
  np.testing.assert_array_equal(s.eval.labels, [0, 1, 2])
  assert sorted(s.train.texts[0] + s.calibration.texts[0]) == sorted(f'train p{i}' for i in range(7))
  # The identity records the revision datasets resolved (its builder hash): other data files, another one.
  from pipeline import fingerprint
  revision = s.versions['train']['revision']
  assert revision and s.versions['eval']['revision'] == revision
  assert fingerprint.of_data(cfg, s)['train']['revision'] == revision
  rows = {'premise': ['changed'] * 7, 'hypothesis': ['h'] * 7, 'idx': list(range(7)), 'label': [0, 1, 2] * 2 + [0]}
  datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / 'data' / 'train-00000-of-00001.parquet'))
  changed = data.load_splits(cfg)
  assert changed.versions['train']['revision'] != revision
  diffs = fingerprint.differences(fingerprint.of_data(cfg, s), fingerprint.of_data(cfg, changed))
  assert any(d.startswith('train.revision: saved ') for d in diffs), diffs
  cfg.eval_split = 'test'
  with pytest.raises(data.DataError, match=r"no split 'test'; splits: train, validation_matched"):
    data.load_splits(cfg)
  cfg.eval_split, cfg.label_field = 'validation_matched', 'gold'
  with pytest.raises(data.MissingColumnError, match=r"'premise', 'hypothesis', 'idx', 'label'"):
    data.load_splits(cfg)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A tiny tfds dataset prepared in array_record format, built without TensorFlow."""
  import tensorflow_datasets as tfds

  class TinyPairs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'premise': tfds.features.Text(), 'hypothesis': tfds.features.Text(),
          'label': tfds.features.ClassLabel(names=['entailment', 'neutral', 'contradiction'])}))

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {'train': self._generate_examples(6), 'test': self._generate_examples(4)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'premise': f'prémisse {i}', 'hypothesis': f'h{i}', 'label': i % 3}

  root = tmp_path_factory.mktemp('tfds')
  builder = TinyPairs(data_dir=str(root), file_format='array_record')
  builder.download_and_prepare()
  return root, pathlib.Path(builder.data_dir)


def test_tfds_array_record_by_name_and_by_directory(tfds_dir):
  root, builder_dir = tfds_dir
  assert list(builder_dir.glob('*.array_record-*'))  # really array_record, not tfrecord
  for cfg in (config(source='tfds', name='tiny_pairs', data_dir=str(root), eval_split='test',
                     text_fields=('premise', 'hypothesis')),
              config(source='tfds', name=str(builder_dir), eval_split='test', text_fields=('premise', 'hypothesis'))):
    s = data.load_splits(cfg)
    assert s.train.label_names == ('entailment', 'neutral', 'contradiction')
    assert sorted(s.train.texts[0]) == [f'prémisse {i}' for i in range(6)]  # bytes decoded as UTF-8
    assert len(s.eval) == 4
    by_text = dict(zip(s.eval.texts[1], s.eval.labels))
    assert by_text == {f'h{i}': i % 3 for i in range(4)}
    assert s.versions == {'train': {'version': '1.0.0'}, 'eval': {'version': '1.0.0'}}  # in the run identity
  cfg.eval_split = 'validation'
  with pytest.raises(data.DataError, match=r"no split 'validation'; splits: .*test"):
    data.load_splits(cfg)


def test_tfds_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(data.DataFileNotFoundError, match='array_record'):
    data.load_splits(config(source='tfds', name='mnist', data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------------------ splits


@pytest.fixture
def corpus(tmp_path):
  return write_csv(tmp_path / 'all.csv', ['text', 'label'], numbered(200, ('a', 'b', 'c')))


def test_splits_disjoint_seeded_and_nested(corpus):
  cfg = config(source='files', train_path=str(corpus), eval_size=40, calibration_size=0.1, max_train_samples=50)
  s = data.load_splits(cfg)
  train, cal, ev = ids_of(s.train), ids_of(s.calibration), ids_of(s.eval)
  assert (len(train), len(cal), len(ev)) == (50, 16, 40)  # calibration: 10% of the 160 left after eval
  assert not set(train) & set(cal) and not set(train) & set(ev) and not set(cal) & set(ev)
  assert train != list(range(50))  # a random sample, not the first N
  again = data.load_splits(cfg)
  assert ids_of(again.train) == train and ids_of(again.eval) == ev  # deterministic
  cfg.seed = 1
  other = data.load_splits(cfg)
  assert ids_of(other.train) != train and ids_of(other.eval) != ev  # differs by seed
  cfg.seed, cfg.max_train_samples = 0, 80
  bigger = data.load_splits(cfg)
  assert set(train) <= set(ids_of(bigger.train))  # nested samples
  assert ids_of(bigger.calibration) == cal and ids_of(bigger.eval) == ev  # other splits unmoved
  cfg.calibration_size = 0.0
  assert ids_of(data.load_splits(cfg).eval) == ev  # eval does not depend on calibration_size
  # Labels follow their texts through every carve.
  for ds in (s.train, s.calibration, s.eval):
    assert all(ds.label_names[l] == 'abc'[int(t[2:]) % 3] for t, l in zip(ds.texts[0], ds.labels))


def test_calibration_fraction_is_capped_count_is_not(corpus):
  assert data._count(0.1, 100_000, 'calibration_size', cap=data.CALIBRATION_CAP) == 2000
  assert data._count(3000, 100_000, 'calibration_size', cap=data.CALIBRATION_CAP) == 3000
  s = data.load_splits(config(source='files', train_path=str(corpus), eval_size=0.25, calibration_size=30,
                              max_eval_samples=20))
  assert (len(s.train), len(s.calibration), len(s.eval)) == (120, 30, 20)


def test_dataset_subset_and_immutability():
  ds = dataset(7)
  sub = ds.subset([5, 1])
  assert sub.texts == (('ex5', 'ex1'),) and list(sub.labels) == [2, 1] and sub.label_names == ds.label_names
  with pytest.raises(ValueError):
    ds.labels[0] = 1  # read-only: a dataset is a value
  assert ds.label_counts() == {'0': 3, '1': 2, '2': 2}


# ------------------------------------------------------------------------------------------------ batches


def test_each_example_once_per_epoch_with_masked_padding():
  ds = dataset(23)
  batches = list(data.iterate_batches(ds, fake_encode, 5, seed=3, epoch=0, shuffle=True))
  assert len(batches) == data.num_batches(23, 5) == 5
  seen = []
  for b in batches:
    assert b['input_ids'].shape[0] == 5 and b['labels'].shape == (5,) and b['example_mask'].shape == (5,)
    assert b['labels'].dtype == np.int32 and b['example_mask'].dtype == np.float32
    real = b['example_mask'] == 1
    seen += list(b['input_ids'][real, 0])
    np.testing.assert_array_equal(b['labels'], b['input_ids'][:, 0] % 3)  # labels match their rows
  assert sorted(seen) == list(range(23))
  last = batches[-1]
  np.testing.assert_array_equal(last['example_mask'], [1, 1, 1, 0, 0])
  assert set(last['input_ids'][3:, 0]) <= set(last['input_ids'][:3, 0])  # padding copies a real row
  assert seen != sorted(seen)  # shuffled
  epoch1 = [list(b['input_ids'][:, 0]) for b in data.iterate_batches(ds, fake_encode, 5, seed=3, epoch=1,
                                                                        shuffle=True)]
  assert epoch1 != [list(b['input_ids'][:, 0]) for b in batches]  # a new order each epoch
  dropped = list(data.iterate_batches(ds, fake_encode, 5, seed=3, epoch=0, shuffle=False, drop_remainder=True))
  assert len(dropped) == 4 and all(b['example_mask'].all() for b in dropped)
  assert [int(i) for b in dropped for i in b['input_ids'][:, 0]] == list(range(20))


def test_start_batch_resumes_exactly_without_tokenizing_skipped_batches():
  ds = dataset(29)
  full = list(data.iterate_batches(ds, fake_encode, 4, seed=7, epoch=2, shuffle=True))
  calls = []

  def counting(a, b):
    calls.append(len(a))
    return fake_encode(a, b)

  resumed = list(data.iterate_batches(ds, counting, 4, seed=7, epoch=2, shuffle=True, start_batch=5))
  assert len(calls) == len(resumed) == len(full) - 5
  for a, b in zip(full[5:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert list(data.iterate_batches(ds, fake_encode, 4, seed=7, epoch=2, shuffle=True, start_batch=99)) == []


def test_each_process_tokenizes_only_its_rows_at_one_agreed_length():
  # Texts of different lengths, so processes' own rows pad to different lengths (buckets 4 and 8).
  ds = data.TextDataset((tuple('abcdefg'[i % 7] + 'x' * (i * 5 % 8) for i in range(21)),), np.arange(21) % 2,
                        ('0', '1'))

  def encode(texts_a, texts_b, length=None, calls=None):
    if calls is not None:
      calls.append((list(texts_a), length))
    longest = max(map(len, texts_a))
    seq = length if length is not None else 4 if longest <= 4 else 8
    assert longest <= seq
    ids = np.zeros((len(texts_a), seq), np.int32)
    for r, t in enumerate(texts_a):
      ids[r, :len(t)] = [ord(c) for c in t]
    return {'input_ids': ids, 'attention_mask': (ids > 0).astype(np.int32)}

  run = lambda p, agree, calls=None: list(data.iterate_batches(
      ds, functools.partial(encode, calls=calls), 8, seed=0, epoch=0, shuffle=True, process_index=p,
      process_count=4, agree_length=agree))
  full = list(data.iterate_batches(ds, encode, 8, seed=0, epoch=0, shuffle=True))
  # The processes run one after another here, so the collective is played back: a first pass records each
  # process's own length per batch, the second answers with their maximum, as max_over_processes would.
  own = [[] for _ in range(4)]
  for p in range(4):
    run(p, lambda seq, p=p: own[p].append(seq) or seq)
  agreed = np.max(own, axis=0)
  assert len(set(np.array(own).ravel())) == 2 and (np.array(own) < agreed).any()  # lengths did differ
  calls = [[] for _ in range(4)]
  shards = [run(p, lambda seq, it=iter(agreed): next(it), calls[p]) for p in range(4)]
  for p in range(4):
    # Only this process's 2 rows of every batch are tokenized: once, and again where its length was short.
    assert all(len(texts) == 2 for texts, _ in calls[p])
    assert [length for _, length in calls[p] if length is not None] == [
        a for a, o in zip(agreed, own[p]) if a != o]
  for i, batch in enumerate(full):
    parts = [s[i] for s in shards]
    assert all(part['labels'].shape == (2,) for part in parts)
    for k in batch:
      np.testing.assert_array_equal(np.concatenate([part[k] for part in parts]), batch[k])
  with pytest.raises(data.BadConfigError, match='divide evenly'):
    next(data.iterate_batches(ds, encode, 6, seed=0, epoch=0, shuffle=False, process_index=0, process_count=4))
  with pytest.raises(data.BadConfigError, match='agree_length'):
    next(data.iterate_batches(ds, encode, 8, seed=0, epoch=0, shuffle=False, process_index=0, process_count=4))


def test_pairs_through_the_real_tokenizer(tmp_path):
  import encoder_jax
  tok = encoder_jax.load_tokenizer('minilm')
  ds = data.TextDataset((('a cat sat', 'dogs run fast'), ('it sat', 'they ran')), [0, 1], ('x', 'y'))
  encode = functools.partial(encoder_jax.tokenize, tok, max_length=16)
  (batch,) = data.iterate_batches(ds, encode, 3, seed=0, epoch=0, shuffle=False)
  assert batch['input_ids'].shape == (3, 16) and batch['input_ids'].dtype == np.int32
  assert batch['token_type_ids'][0].max() == 1  # the second sentence is segment 1
  np.testing.assert_array_equal(batch['example_mask'], [1, 1, 0])


# ------------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
  missing = tmp_path / 'nope.csv'
  with pytest.raises(FileNotFoundError, match='nope.csv'):
    data.load_splits(config(source='files', train_path=str(missing)))
  assert issubclass(data.DataFileNotFoundError, ValueError)


def test_missing_column_lists_present_columns(tmp_path):
  path = write_csv(tmp_path / 'x.csv', ['sentence', 'gold'], numbered(4))
  with pytest.raises(data.MissingColumnError, match=r"x\.csv: no column 'text'.*'sentence', 'gold'"):
    data.load_splits(config(source='files', train_path=str(path)))
  with pytest.raises(data.MissingColumnError, match=r"no column 'label' \(data.label_field\)"):
    data.load_splits(config(source='files', train_path=str(path), text_fields=('sentence',)))


def test_unknown_eval_label_names_file_and_line(tmp_path):
  train = write_csv(tmp_path / 'train.csv', ['text', 'label'], numbered(4))
  ev = write_csv(tmp_path / 'dev.csv', ['text', 'label'], [('a', 'pos'), ('b', 'neg'), ('c', 'maybe')])
  with pytest.raises(data.UnknownLabelError, match=r"dev\.csv: line 4: label 'maybe' is not among .*neg, pos"):
    data.load_splits(config(source='files', train_path=str(train), eval_path=str(ev)))


def test_empty_split(tmp_path):
  train = write_csv(tmp_path / 'train.csv', ['text', 'label'], numbered(4))
  ev = write_csv(tmp_path / 'dev.csv', ['text', 'label'], [])
  with pytest.raises(data.EmptySplitError, match=r'dev\.csv: the eval split has no rows'):
    data.load_splits(config(source='files', train_path=str(train), eval_path=str(ev)))
  with pytest.raises(data.EmptySplitError, match='cannot be carved'):
    data.load_splits(config(source='files', train_path=str(train), eval_size=4))


@pytest.mark.parametrize('bad, shown', [(None, 'None'), (3, 'int'), (float('nan'), 'NaN')])
def test_text_that_is_not_text(tmp_path, bad, shown):
  rows = [{'text': 'fine', 'label': 0}, {'text': 'also fine', 'label': 1}, {'text': bad, 'label': 0}]
  path = write_jsonl(tmp_path / 'bad.jsonl', rows)
  with pytest.raises(data.BadTextError, match=rf"bad\.jsonl: line 3: 'text' is .*{shown}.*not text"):
    data.load_splits(config(source='files', train_path=str(path)))


def test_parquet_null_text_names_row(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({'text': ['a', 'b', None, 'd'], 'label': [0, 1, 0, 1]}), tmp_path / 'n.parquet')
  with pytest.raises(data.BadTextError, match=r"n\.parquet: row 2 \(0-based\): 'text' is None"):
    data.load_splits(config(source='files', train_path=str(tmp_path / 'n.parquet')))


def test_bad_label_and_missing_json_field(tmp_path):
  path = write_jsonl(tmp_path / 'l.jsonl', [{'text': 'a', 'label': 1}, {'text': 'b', 'label': 0.5}])
  with pytest.raises(data.BadLabelError, match=r'l\.jsonl: line 2: label .* is 0.5, not a class'):
    data.load_splits(config(source='files', train_path=str(path)))
  path = write_jsonl(tmp_path / 'm.jsonl', [{'text': 'a', 'label': 1}, {'label': 0}])
  with pytest.raises(data.MissingColumnError, match=r"m\.jsonl: line 2 has no field 'text'"):
    data.load_splits(config(source='files', train_path=str(path)))


def test_ragged_csv_row_and_non_utf8_file(tmp_path):
  path = tmp_path / 'r.csv'
  path.write_text('text,label\na,pos\nb,neg,extra\n', encoding='utf-8')
  with pytest.raises(data.DataError, match=r'r\.csv: line 3 has 3 fields but the header has 2'):
    data.load_splits(config(source='files', train_path=str(path)))
  path.write_bytes('text,label\na,pos\ncaf\xe9,neg\n'.encode('latin-1'))
  with pytest.raises(data.DataError, match=r'r\.csv: line 3 is not utf-8-sig text'):
    data.load_splits(config(source='files', train_path=str(path)))


def test_unknown_source_and_bad_text_fields(tmp_path):
  with pytest.raises(data.UnknownSourceError, match="'imdb'.*movie_reviews, tweets, bbc_news, files, hub, tfds"):
    data.load_splits(config(source='imdb'))
  path = write_csv(tmp_path / 'x.csv', ['a', 'b', 'c', 'label'], [('1', '2', '3', 'y')])
  for fields in ((), ('a', 'b', 'c')):
    with pytest.raises(data.BadConfigError, match='1 or 2 columns'):
      data.load_splits(config(source='files', train_path=str(path), text_fields=fields))
  with pytest.raises(data.BadConfigError, match='unknown data file type'):
    data.load_splits(config(source='files', train_path=str(write_csv(tmp_path / 'x.txt', ['a'], []))))


def test_base_config_fields():
  cfg = data.base_config()
  for field in ('source', 'name', 'subset', 'train_split', 'eval_split', 'train_path', 'eval_path', 'text_fields',
                'label_field', 'max_train_samples', 'max_eval_samples', 'calibration_size', 'eval_size', 'seed',
                'cache_dir', 'max_seq_length'):
    assert field in cfg, field
  assert cfg.max_seq_length == 128 and cfg.source in data.SOURCES
  assert math.isclose(cfg.calibration_size, 0.1)


@pytest.mark.parametrize('cell', ['\u200b', ' \u200b\u200d ', '\ufeff', '\u2060\t', '\u00ad'])
def test_a_text_cell_of_zero_width_characters_is_empty(tmp_path, cell):
  (tmp_path / 'train.csv').write_text(f'text,label\ngood film,1\n"{cell}",0\ndull plot,0\nfun,1\n', encoding='utf-8')
  cfg = config(source='files', train_path=str(tmp_path / 'train.csv'), calibration_size=0, eval_size=1)
  with pytest.raises(data.BadTextError, match=r"train\.csv: line 3: 'text' is empty"):
    data.load_splits(cfg)
  (tmp_path / 'train.csv').write_text('text,label\ngood film,1\nx\u200b,0\ndull plot,0\nfun,1\n', encoding='utf-8')
  assert len(data.load_splits(cfg).train) == 3  # a visible character beside them is text
