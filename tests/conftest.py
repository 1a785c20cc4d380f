"""Test set-up: 8 simulated CPU devices (sharding tests), highest matmul precision for parity tests."""

import os
import sys

# Must happen before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_bert(tmp_path_factory):
  """A random 3-layer BERT (hidden 15, 3 heads) as a Hugging Face checkpoint directory, written once."""
  from tests.tiny_checkpoint import write_checkpoint
  path = tmp_path_factory.mktemp('tiny_bert') / 'ckpt'
  write_checkpoint(path, hidden=15, layers=3, heads=3, intermediate=7, max_positions=17)
  return path


@pytest.fixture(scope='session')
def models():
  """The small exit models of tests/adaptive_models.py (test_adaptive, test_sweet_eval): method -> params."""
  from tests.adaptive_models import make_models
  return make_models()


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """Tiny checkpointed workdirs (tests/trained_workdirs.py) shared by test_predict and test_export:
  name -> (config, workdir), made on first use."""
  from tests import trained_workdirs
  root = trained_workdirs.task(tmp_path_factory.mktemp('trained'))
  made = {}

  def get(name):
    if name not in made:
      method, constant, evaluate = {'sweet': ('sweet', False, True), 'multi_model': ('multi_model', False, False),
                                    'papa': ('sweet', True, False)}[name]
      made[name] = trained_workdirs.make_workdir(root, name, method, constant=constant, evaluate=evaluate)
    return made[name]

  get.root = root
  return get
