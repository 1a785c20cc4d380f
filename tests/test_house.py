"""The house as a newcomer meets it: README's commands name files that exist, every config builds, the root
holds only the programs, imports go down, and the first lines a program prints are ours."""

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = {'train.py', 'eval.py', 'predict.py', 'export.py'}
# Floor of each package (DESIGN.md): a module may import only from floors below its own, and the floor-2
# packages never import each other.
FLOORS = {'encoder_jax': 1, 'sweet_jax': 2, 'papa_jax': 2, 'pipeline': 2, 'drivers': 3, 'experiments': 5}


def _code_blocks(text: str) -> list[str]:
  return re.findall(r'```(?:bash|sh)?\n(.*?)```', text, flags=re.S)


def readme_paths() -> list[tuple[str, str]]:
  """(kind, name) for every script, module and config that a shell line in README's code blocks runs."""
  found = []
  for doc in ('README.md', 'experiments/README.md'):
    for block in _code_blocks((ROOT / doc).read_text()):
      for line in block.splitlines():
        line = line.split('#', 1)[0]
        found += [('file', m) for m in re.findall(r'(?:python|bash)\s+([\w./-]+\.(?:py|sh))\b', line)]
        found += [('module', m) for m in re.findall(r'python -m ([\w.]+)', line) if m != 'pytest']
        found += [('file', m) for m in re.findall(r'--config[ =](configs/\w+\.py)', line)]
  return found


def test_every_command_in_the_readmes_names_an_existing_file():
  paths = readme_paths()
  assert ('file', 'train.py') in paths and ('file', 'configs/papa_demo.py') in paths  # the parser reads them
  missing = [name for kind, name in paths if kind == 'file' and not (ROOT / name).is_file()]
  missing += [name for kind, name in paths if kind == 'module' and importlib.util.find_spec(name) is None]
  assert not missing, f'README commands name what does not exist: {missing}'


@pytest.mark.parametrize('name', sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if p.stem != '__init__'))
def test_every_config_imports_and_builds(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert isinstance(config, ml_collections.ConfigDict) and config.method and config.model.checkpoint


def test_the_root_holds_only_the_programs():
  assert {p.name for p in ROOT.glob('*.py')} == PROGRAMS


def _imported_packages(path: pathlib.Path) -> set[str]:
  tops = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      tops |= {a.name.split('.')[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      tops.add(node.module.split('.')[0])
  return tops


def test_imports_go_down():
  wrong = []
  for package, floor in FLOORS.items():
    for path in (ROOT / package).rglob('*.py'):
      for top in _imported_packages(path) & set(FLOORS):
        if top != package and FLOORS[top] >= floor:
          wrong.append(f'{path.relative_to(ROOT)} imports {top}')
  assert not wrong, wrong


def test_loading_a_tokenizer_prints_no_torch_advisory():
  """transformers says 'PyTorch was not found' when it initialises without torch; this library needs only its
  tokenizers, so the programs keep that alarm off the console (a user's own advisory setting is kept)."""
  env = {k: v for k, v in os.environ.items() if k != 'TRANSFORMERS_NO_ADVISORY_WARNINGS'}
  code = ('import os, encoder_jax; encoder_jax.load_tokenizer("minilm"); '
          'print("env", os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS"))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  assert 'PyTorch was not found' not in out.stdout + out.stderr
  assert 'env None' in out.stdout  # the setting is restored after the import
