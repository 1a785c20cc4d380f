"""Test set-up: 8 simulated CPU devices (sharding tests), highest matmul precision for parity tests, the compile
flags of tests/script_env.py and one compilation cache per run."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.script_env import COMPILE_FLAGS  # noqa: E402

# Must happen before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {COMPILE_FLAGS}')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


# One JAX persistent compilation cache for the whole test run: both xdist workers (they inherit the environment
# of the process that loads this file first) and every train.py / eval.py subprocess a test starts compile the
# same tiny models again and again, which is most of the suite's time. The cache is keyed by the program, its
# compile options and the jax version, so a hit is the program that would have been compiled. It lives for one
# run: the process that made it removes it at the end (a cache the user set is left alone).
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='encoder-tests-jax-cache-')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

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


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
