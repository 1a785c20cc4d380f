"""Architecture families, one module each, behind one interface (base.Family).

  bert.py     BERT / MiniLM: the defaults (absolute positions from 0, token types)
  roberta.py  positions numbered past the padding id
  mpnet.py    RoBERTa's positions, no token types, a bucketed relative bias shared by all layers
  deberta.py  DeBERTa v1 and v2/v3: disentangled relative scores, padding zeroed, v2's convolution

The encoder asks `family(config)` once and calls its hooks; it knows no model_type string. Adding a family
is a new module here (its hooks and its Hugging Face names), an entry in FAMILIES, and its parity fixtures.
"""

from __future__ import annotations

from encoder_jax.architectures import bert, deberta, mpnet, roberta
from encoder_jax.architectures.base import Family
from encoder_jax.config import EncoderConfig

FAMILIES: dict[str, Family] = {
    'bert': bert.FAMILY,
    'roberta': roberta.FAMILY,
    'mpnet': mpnet.FAMILY,
    'deberta': deberta.FAMILY,
    'deberta-v2': deberta.FAMILY,
}


def family(config: EncoderConfig) -> Family:
  """The family of config.model_type (EncoderConfig has checked that it is supported)."""
  return FAMILIES[config.model_type]
