"""Relative-position arithmetic under the names it had before the families got their own modules.

MPNet's buckets live in encoder_jax/architectures/mpnet.py, DeBERTa's log buckets, gather rows and score
term in encoder_jax/architectures/deberta.py; these names stay importable for callers of the old module.
"""

from encoder_jax.architectures.deberta import disentangled_scores, log_buckets as deberta_log_buckets
from encoder_jax.architectures.deberta import rows as deberta_rows
from encoder_jax.architectures.mpnet import bucket_matrix as mpnet_bucket_matrix, buckets_of as mpnet_buckets

__all__ = ['deberta_log_buckets', 'deberta_rows', 'disentangled_scores', 'mpnet_bucket_matrix', 'mpnet_buckets']
