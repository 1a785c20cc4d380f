"""The model card's command, `python train.py --config configs/sweet_mnli.py` then `python eval.py`, end to end
through the ids the paper configs name ('bert-base-uncased'; 'microsoft/deberta-base' for
configs/sweet_mnli_deberta.py; 'roberta-base' for PAPA's configs/papa_sst2_roberta.py; glue/mnli and glue/sst2),
offline, against a Hugging Face home laid out as huggingface_hub and datasets write it: each model under
hub/models--{org}--{name}/snapshots/<rev>/ with refs/main (tiny random 12-layer models in the real checkpoints'
tensor names), and MNLI- and SST-2-shaped rows prepared by datasets' own parquet builder under
datasets/glue/{mnli,sst2}/0.0.0/<rev>/ with the real split and label names. Only size overrides on the command
line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.tiny_checkpoint import TOKEN_WORDS, with_word_tokenizer, write_checkpoint
from tests.script_env import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = Path(__file__).parent / 'fixtures'
REVISION = '86b5e0934494bd15c9632b12f734a8a67f723594'  # any 40-hex commit id
MNLI_LABELS = ['entailment', 'neutral', 'contradiction']
MNLI_SPLITS = {'train': 300, 'validation_matched': 60, 'validation_mismatched': 30, 'test_matched': 20,
               'test_mismatched': 20}
SST2_LABELS = ['negative', 'positive']
SST2_SPLITS = {'train': 300, 'validation': 60, 'test': 40}
SIZES = ['--config.data.max_train_samples=64', '--config.data.calibration_size=16',
         '--config.data.max_eval_samples=24', '--config.data.max_seq_length=16', '--config.train.batch_size=16',
         '--config.train.num_epochs=1', '--config.eval.batch_size=8', '--config.eval.timing_examples=8',
         '--config.eval.timing_repeats=1']


def write_hub_model(home, repo: str, source) -> None:
  """Checkpoint directory `source` as huggingface_hub caches repo: models--{org}--{name}/snapshots/<rev>/ and
  refs/main."""
  repo_dir = home / 'hub' / ('models--' + repo.replace('/', '--'))
  snapshot = repo_dir / 'snapshots' / REVISION
  snapshot.mkdir(parents=True)
  for f in source.iterdir():
    (snapshot / f.name).write_bytes(f.read_bytes())
  (repo_dir / 'refs').mkdir()
  (repo_dir / 'refs' / 'main').write_text(REVISION)


def bert_base_uncased(directory):
  """A tiny random 12-layer BERT (MiniLM's vocabulary and tokenizer) in bert-base-uncased's file names: 'bert.'
  prefix, legacy LayerNorm.gamma/.beta, its pooler and pre-training heads."""
  write_checkpoint(directory, hidden=15, layers=12, heads=3, intermediate=7, max_positions=512)
  rng = np.random.default_rng(0)
  tensors = {'bert.' + k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
             for k, v in load_file(str(directory / 'model.safetensors')).items()}
  tensors.update({'bert.pooler.dense.weight': rng.normal(size=(15, 15)).astype(np.float32),
                  'bert.pooler.dense.bias': np.zeros(15, np.float32),
                  'cls.predictions.bias': np.zeros(30522, np.float32),
                  'cls.predictions.transform.dense.weight': np.ones((15, 15), np.float32),
                  'cls.predictions.transform.LayerNorm.gamma': np.ones(15, np.float32),
                  'cls.seq_relationship.weight': np.ones((2, 15), np.float32)})
  save_file(tensors, str(directory / 'model.safetensors'))


def deberta_base(directory):
  """A tiny random 12-layer DeBERTa v1 in microsoft/deberta-base's file names: fused in_proj, the absolute
  position table it ships unused (position_biased_input false), its masked-LM head; a word-piece tokenizer of the
  task's words (the fixture's vocabulary has 101 entries)."""
  with_word_tokenizer(FIXTURES / 'deberta_v1_cls', directory)
  rng = np.random.default_rng(1)
  tensors = {}
  for name, value in load_file(str(directory / 'model.safetensors')).items():
    match = re.match(r'(deberta\.encoder\.layer\.)(\d+)(\..*)', name)
    if name.startswith(('classifier.', 'pooler.')):
      continue
    if not match:
      tensors[name] = value
      continue
    for layer in range(int(match.group(2)), 12, 2):  # the fixture's 2 layers, repeated with noise
      tensors[f'{match.group(1)}{layer}{match.group(3)}'] = value + 0.05 * rng.normal(size=value.shape).astype(
          np.float32)
  tensors.update({'deberta.embeddings.position_embeddings.weight': np.ones((512, 15), np.float32),
                  'lm_predictions.lm_head.dense.weight': np.ones((15, 15), np.float32),
                  'lm_predictions.lm_head.bias': np.zeros(101, np.float32)})
  save_file(tensors, str(directory / 'model.safetensors'))
  config = json.loads((directory / 'config.json').read_text())
  config.update(num_hidden_layers=12, max_position_embeddings=512, architectures=['DebertaModel'])
  for key in ('id2label', 'label2id'):
    config.pop(key, None)
  (directory / 'config.json').write_text(json.dumps(config))


def roberta_base(directory):
  """A tiny random RoBERTa with roberta-base's 144 heads (in 2 layers of 72, head size 2: PAPA's ks 126 and 135
  resolve as they do there, and each k compiles 2 layers, not 12) in roberta-base's file names: 'roberta.'
  prefix, 514 positions (numbered past the padding id), one token type, its masked-LM head; a byte-level BPE
  tokenizer with RoBERTa's special tokens (<s> 0, <pad> 1, </s> 2) over the task's words."""
  import tokenizers
  import transformers
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.train_from_iterator([' '.join(TOKEN_WORDS)] * 5, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  vocab = bpe.get_vocab_size()
  write_checkpoint(directory, hidden=144, layers=2, heads=72, intermediate=7, max_positions=514)
  tensors = {'roberta.' + k: v for k, v in load_file(str(directory / 'model.safetensors')).items()}
  for name, rows in (('word', vocab), ('token_type', 1)):  # the BPE vocabulary; one token type
    tensors[f'roberta.embeddings.{name}_embeddings.weight'] = tensors[f'roberta.embeddings.{name}_embeddings.weight'][:rows]
  tensors.update({'lm_head.dense.weight': np.ones((144, 144), np.float32), 'lm_head.layer_norm.weight':
                  np.ones(144, np.float32), 'lm_head.bias': np.zeros(vocab, np.float32)})
  save_file(tensors, str(directory / 'model.safetensors'))
  config = json.loads((directory / 'config.json').read_text())
  config.update(model_type='roberta', architectures=['RobertaForMaskedLM'], vocab_size=vocab, type_vocab_size=1,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
  (directory / 'config.json').write_text(json.dumps(config))
  for f in ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json'):  # MiniLM's, from write_checkpoint
    (directory / f).unlink(missing_ok=True)
  merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in json.loads(bpe.to_str())['model']['merges']]
  transformers.RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges).save_pretrained(str(directory))


# hub id a paper config names -> the writer of a tiny checkpoint in that checkpoint's names
HUB_MODELS = {'bert-base-uncased': bert_base_uncased, 'microsoft/deberta-base': deberta_base,
              'roberta-base': roberta_base}
# SWEET paper config -> whether eval.py runs too (the card's command does; the DeBERTa config trains only, to keep
# the suite's time)
SWEET_CONFIGS = {'sweet_mnli': True, 'sweet_mnli_deberta': False}


def _mnli_rows(rng, n, labels):
  sentence = lambda k: ' '.join(rng.choice(TOKEN_WORDS, k))
  return {'premise': [sentence(6) for _ in range(n)],
          'hypothesis': [sentence(2) + (' great' if y == 0 else ' awful' if y == 2 else '') for y in labels]}


def _sst2_rows(rng, n, labels):
  return {'sentence': [' '.join(rng.choice(TOKEN_WORDS, 5)) + (' great' if y == 1 else ' awful') for y in labels]}


# GLUE task -> (its text features, label names, split sizes, rows(rng, n, labels) of its text fields)
GLUE = {'mnli': (('premise', 'hypothesis'), MNLI_LABELS, MNLI_SPLITS, _mnli_rows),
        'sst2': (('sentence',), SST2_LABELS, SST2_SPLITS, _sst2_rows)}


def write_glue(home, task: str) -> None:
  """Rows shaped as GLUE task `task` as datasets caches glue/{task} after a first online load: its parquet
  builder, dataset name 'glue', config `task`, under home/datasets (what load_dataset('glue', task) finds
  offline), with the task's text fields, ClassLabel names and splits."""
  import datasets
  from datasets.data_files import DataFilesDict
  from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig
  fields, names, splits, rows_of = GLUE[task]
  features = datasets.Features({**{f: datasets.Value('string') for f in fields},
                                'label': datasets.ClassLabel(names=names), 'idx': datasets.Value('int32')})
  rng = np.random.default_rng(0)
  files = {}
  for split, n in splits.items():
    labels = rng.integers(0, len(names), n) if not split.startswith('test') else np.full(n, -1)  # hidden
    rows = {**rows_of(rng, n, labels), 'label': [int(y) for y in labels], 'idx': list(range(n))}
    path = home / 'parquet' / task / f'{split}.parquet'
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    files[split] = [str(path)]

  class Glue(Parquet):  # the hub's glue repo: one parquet config per task
    BUILDER_CONFIGS = [ParquetConfig(name=task, data_files=DataFilesDict.from_patterns(files))]
  Glue(cache_dir=str(home / 'datasets'), dataset_name='glue', config_name=task, hash=REVISION).download_and_prepare()


@pytest.fixture(scope='module')
def hf_home(tmp_path_factory):
  root = tmp_path_factory.mktemp('hf_home')
  home = root / 'home'
  for repo, writer in HUB_MODELS.items():
    writer(root / repo)
    write_hub_model(home, repo, root / repo)
  for task in GLUE:
    write_glue(home, task)
  return home


def _run(home, script, *args):
  env = script_env(drop=('HF_HUB_CACHE', 'HF_DATASETS_CACHE'), HF_HOME=str(home), HF_HUB_OFFLINE='1',
                   HF_DATASETS_OFFLINE='1')
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.parametrize('name', sorted(SWEET_CONFIGS))
def test_the_cards_command_runs_through_a_hugging_face_cache(hf_home, tmp_path, name):
  work = tmp_path / name
  args = ['--config', f'configs/{name}.py', '--workdir', str(work), *SIZES]
  _run(hf_home, 'train.py', *args)
  results = json.loads((work / 'results.json').read_text())
  assert results['method'] == 'sweet' and results['exit_layers'] == [1, 4, 6, 12]
  assert results['label_names'] == MNLI_LABELS and len(results['per_exit_accuracy']) == 4
  assert results['num_examples'] == 24  # a sample of validation_matched, the config's eval split
  if not SWEET_CONFIGS[name]:
    return
  _run(hf_home, 'eval.py', *args)
  curve = json.loads((work / 'eval' / 'curve.json').read_text())
  assert all(sum(point['exit_counts']) == 24 for point in curve['points'])


PAPA_SIZES = ['--config.data.max_train_samples=64', '--config.data.max_eval_samples=24', '--config.papa.length=16',
              '--config.papa.batch_size=16', '--config.papa.num_epochs=1', '--config.papa.eval_batch_size=32',
              '--config.papa.ranking_epochs=1', '--config.papa.measure_speed=False']  # speed: a timing, not a result


def test_papa_roberta_paper_config_runs_through_a_hugging_face_cache(hf_home, tmp_path):
  """configs/papa_sst2_roberta.py as written (roberta-base, glue/sst2, its ks 0, half, 126, 135, all): every
  PAPA stage, from the cache, with only size overrides."""
  work = tmp_path / 'papa_sst2_roberta'
  _run(hf_home, 'train.py', '--config', 'configs/papa_sst2_roberta.py', '--workdir', str(work), *PAPA_SIZES)
  results = json.loads((work / 'papa' / 'results.json').read_text())
  assert results['model'] == 'roberta-base' and results['num_heads'] == 144
  assert results['data'] == {**results['data'], 'name': 'glue', 'subset': 'sst2', 'eval_split': 'validation',
                             'num_train': 64, 'num_eval': 24, 'label_names': SST2_LABELS}
  assert [r['k'] for r in results['results']] == [0, 72, 126, 135, 144]
  assert all(0 <= r['accuracy'] <= 1 for r in results['results'])
