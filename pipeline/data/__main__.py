"""By hand: python -m pipeline.data source=movie_reviews seed=1 (see pipeline.data.splits.main)."""

from pipeline.data.splits import main

if __name__ == '__main__':
  main()
