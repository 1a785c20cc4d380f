"""BERT: the encoder as it is, absolute positions from 0 and token types; every default of base.Family."""

from encoder_jax.architectures.base import Family


class Bert(Family):
  """BERT (and MiniLM, its distillation): nothing beyond the shared encoder."""


FAMILY = Bert()
