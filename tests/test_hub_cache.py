"""The model card's command, `python train.py --config configs/sweet_mnli.py` then `python eval.py`, end to end
through the ids the paper config names ('bert-base-uncased', glue/mnli), offline, against a Hugging Face home laid
out as huggingface_hub and datasets write it: the model under hub/models--bert-base-uncased/snapshots/<rev>/ with
refs/main (a tiny random 12-layer BERT in bert-base-uncased's own tensor names: 'bert.' prefix, legacy
LayerNorm.gamma/.beta, its pre-training heads), and MNLI-shaped rows prepared by datasets' own parquet builder
under datasets/glue/mnli/0.0.0/<rev>/ with MNLI's split and label names. Only size overrides on the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.tiny_checkpoint import TOKEN_WORDS, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVISION = '86b5e0934494bd15c9632b12f734a8a67f723594'  # any 40-hex commit id
MNLI_LABELS = ['entailment', 'neutral', 'contradiction']
MNLI_SPLITS = {'train': 300, 'validation_matched': 60, 'validation_mismatched': 30, 'test_matched': 20,
               'test_mismatched': 20}
SIZES = ['--config.data.max_train_samples=120', '--config.data.calibration_size=24',
         '--config.data.max_eval_samples=40', '--config.data.max_seq_length=24', '--config.train.batch_size=8',
         '--config.train.num_epochs=1', '--config.eval.batch_size=16', '--config.eval.timing_examples=16',
         '--config.eval.timing_repeats=1']


def write_hub_model(home, repo: str, source) -> None:
  """source (a checkpoint directory) as huggingface_hub caches repo: models--{repo}/snapshots/<rev>/, refs/main.
  Tensors renamed as bert-base-uncased's file names them, with its pre-training heads and a pooler."""
  repo_dir = home / 'hub' / ('models--' + repo.replace('/', '--'))
  snapshot = repo_dir / 'snapshots' / REVISION
  snapshot.mkdir(parents=True)
  rng = np.random.default_rng(0)
  tensors = {'bert.' + k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
             for k, v in load_file(str(source / 'model.safetensors')).items()}
  h = tensors['bert.embeddings.word_embeddings.weight'].shape[1]
  tensors.update({'bert.pooler.dense.weight': rng.normal(size=(h, h)).astype(np.float32),
                  'bert.pooler.dense.bias': np.zeros(h, np.float32),
                  'cls.predictions.bias': np.zeros(30522, np.float32),
                  'cls.predictions.transform.dense.weight': np.ones((h, h), np.float32),
                  'cls.predictions.transform.LayerNorm.gamma': np.ones(h, np.float32),
                  'cls.seq_relationship.weight': np.ones((2, h), np.float32)})
  save_file(tensors, str(snapshot / 'model.safetensors'))
  for f in source.iterdir():
    if f.name != 'model.safetensors':
      (snapshot / f.name).write_bytes(f.read_bytes())
  (repo_dir / 'refs').mkdir()
  (repo_dir / 'refs' / 'main').write_text(REVISION)


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
  write_checkpoint(root / 'bert', hidden=15, layers=12, heads=3, intermediate=7, max_positions=512)
  home = root / 'home'
  write_hub_model(home, 'bert-base-uncased', root / 'bert')
  write_glue_mnli(home)
  return home


def _run(home, script, *args):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'HF_HUB_CACHE', 'HF_DATASETS_CACHE')}
  env.update(HF_HOME=str(home), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_the_cards_command_runs_through_a_hugging_face_cache(hf_home, tmp_path):
  work = tmp_path / 'sweet_mnli'
  args = ['--config', 'configs/sweet_mnli.py', '--workdir', str(work), *SIZES]
  _run(hf_home, 'train.py', *args)
  results = json.loads((work / 'results.json').read_text())
  assert results['method'] == 'sweet' and results['exit_layers'] == [1, 4, 6, 12]
  assert results['label_names'] == MNLI_LABELS and len(results['per_exit_accuracy']) == 4
  assert results['num_examples'] == 40  # a sample of validation_matched, the config's eval split
  _run(hf_home, 'eval.py', *args)
  curve = json.loads((work / 'eval' / 'curve.json').read_text())
  assert all(sum(point['exit_counts']) == 40 for point in curve['points'])
