"""encoder_jax: one pure-functional Flax encoder (BERT, RoBERTa, MPNet, DeBERTa v1 and v2/v3) that every method
in this project uses; each family's additions live in encoder_jax/architectures."""

from encoder_jax.config import EncoderConfig, HEAD_KINDS, SUPPORTED_MODEL_TYPES
from encoder_jax.hf_import import CheckpointError, load_pretrained, PACKAGED
from encoder_jax.model import SHARED, Encoder, embed, encode, init_params, run_layers
from encoder_jax.tokenization import load_tokenizer, make_encode_fn, papa_layout, tokenize
from encoder_jax.tuning import compiler_options

__all__ = [
    'EncoderConfig', 'HEAD_KINDS', 'SUPPORTED_MODEL_TYPES', 'CheckpointError', 'load_pretrained', 'PACKAGED',
    'SHARED', 'Encoder', 'embed', 'encode', 'init_params', 'run_layers', 'load_tokenizer', 'make_encode_fn',
    'papa_layout', 'tokenize', 'compiler_options',
]
