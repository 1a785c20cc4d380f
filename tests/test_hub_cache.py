"""The model card's command, `python train.py --config configs/sweet_mnli.py` then `python eval.py`, end to end
through the ids the paper configs name ('bert-base-uncased', and 'microsoft/deberta-base' for
configs/sweet_mnli_deberta.py; glue/mnli), offline, against a Hugging Face home laid out as huggingface_hub and
datasets write it: each model under hub/models--{org}--{name}/snapshots/<rev>/ with refs/main (tiny random
12-layer models in the real checkpoints' tensor names), and MNLI-shaped rows prepared by datasets' own parquet
builder under datasets/glue/mnli/0.0.0/<rev>/ with MNLI's split and label names. Only size overrides on the
command line."""

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = Path(__file__).parent / 'fixtures'
REVISION = '86b5e0934494bd15c9632b12f734a8a67f723594'  # any 40-hex commit id
MNLI_LABELS = ['entailment', 'neutral', 'contradiction']
MNLI_SPLITS = {'train': 300, 'validation_matched': 60, 'validation_mismatched': 30, 'test_matched': 20,
               'test_mismatched': 20}
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


# paper config -> (the hub id it names, the writer of a tiny checkpoint in that checkpoint's names, whether eval.py
# runs too: the card's command does; the DeBERTa config trains only, to keep the suite's time)
PAPER_CONFIGS = {'sweet_mnli': ('bert-base-uncased', bert_base_uncased, True),
                 'sweet_mnli_deberta': ('microsoft/deberta-base', deberta_base, False)}


def write_glue_mnli(home) -> None:
  """MNLI-shaped rows as datasets caches glue/mnli after a first online load: its parquet builder, dataset name
  'glue', config 'mnli', under home/datasets (what load_dataset('glue', 'mnli') finds offline)."""
  import datasets
  from datasets.data_files import DataFilesDict
  from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig
  features = datasets.Features({'premise': datasets.Value('string'), 'hypothesis': datasets.Value('string'),
                                'label': datasets.ClassLabel(names=MNLI_LABELS), 'idx': datasets.Value('int32')})
  rng = np.random.default_rng(0)
  files = {}
  for split, n in MNLI_SPLITS.items():
    labels = rng.integers(0, 3, n) if not split.startswith('test') else np.full(n, -1)  # GLUE hides test labels
    sentence = lambda k: ' '.join(rng.choice(TOKEN_WORDS, k))
    rows = {'premise': [sentence(6) for _ in range(n)],
            'hypothesis': [sentence(2) + (' great' if y == 0 else ' awful' if y == 2 else '') for y in labels],
            'label': [int(y) for y in labels], 'idx': list(range(n))}
    path = home / 'parquet' / f'{split}.parquet'
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    files[split] = [str(path)]

  class Glue(Parquet):  # the hub's glue repo: one parquet config per task
    BUILDER_CONFIGS = [ParquetConfig(name='mnli', data_files=DataFilesDict.from_patterns(files))]
  Glue(cache_dir=str(home / 'datasets'), dataset_name='glue', config_name='mnli', hash=REVISION).download_and_prepare()


@pytest.fixture(scope='module')
def hf_home(tmp_path_factory):
  root = tmp_path_factory.mktemp('hf_home')
  home = root / 'home'
  for name, (repo, writer, _) in PAPER_CONFIGS.items():
    writer(root / name)
    write_hub_model(home, repo, root / name)
  write_glue_mnli(home)
  return home


def _run(home, script, *args):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'HF_HUB_CACHE', 'HF_DATASETS_CACHE')}
  env.update(HF_HOME=str(home), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.parametrize('name', sorted(PAPER_CONFIGS))
def test_the_cards_command_runs_through_a_hugging_face_cache(hf_home, tmp_path, name):
  work = tmp_path / name
  args = ['--config', f'configs/{name}.py', '--workdir', str(work), *SIZES]
  _run(hf_home, 'train.py', *args)
  results = json.loads((work / 'results.json').read_text())
  assert results['method'] == 'sweet' and results['exit_layers'] == [1, 4, 6, 12]
  assert results['label_names'] == MNLI_LABELS and len(results['per_exit_accuracy']) == 4
  assert results['num_examples'] == 24  # a sample of validation_matched, the config's eval split
  if not PAPER_CONFIGS[name][2]:
    return
  _run(hf_home, 'eval.py', *args)
  curve = json.loads((work / 'eval' / 'curve.json').read_text())
  assert all(sum(point['exit_counts']) == 24 for point in curve['points'])
