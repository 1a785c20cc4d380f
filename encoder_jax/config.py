"""EncoderConfig: the architecture of a BERT-style encoder, and which attention kernel each head uses.

The architecture fields come from a Hugging Face config.json (`EncoderConfig.from_hf`). The kernel
choice is a per-layer, per-head tuple of names (see attention.py); SWEET exits and PAPA constant heads
are orthogonal switches on this one config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from encoder_jax.tuning import KERNEL_FORMS

SUPPORTED_MODEL_TYPES = ('bert', 'roberta', 'mpnet', 'deberta', 'deberta-v2')
DEBERTA_TYPES = ('deberta', 'deberta-v2')
CONV_ACTS = ('tanh', 'gelu')
# Families that number positions from pad_token_id + 1 (fairseq's make_positions).
_PADDING_OFFSET_TYPES = ('roberta', 'mpnet')
HEAD_KINDS = ('softmax', 'constant', 'mixed')
# Hugging Face's MPNet buckets relative positions into 32 buckets up to distance 128, whatever the config says.
MPNET_BUCKETS, MPNET_MAX_DISTANCE = 32, 128


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """A post-layer-norm BERT-style encoder: BERT, RoBERTa, MPNet, DeBERTa (v1) or DeBERTa v2/v3.

  Attributes:
    model_type: 'bert', 'roberta', 'mpnet', 'deberta' or 'deberta-v2' (RoBERTa and MPNet offset positions
      past the padding id; MPNet adds a bucketed relative position bias, shared by all layers, to every
      attention score; DeBERTa adds disentangled content-to-position and position-to-content scores).
    vocab_size: rows of the word-embedding table.
    hidden_size: model width H.
    num_layers: transformer layers.
    num_heads: attention heads per layer; H must divide evenly.
    intermediate_size: width of the feed-forward layer.
    max_position_embeddings: rows of the position table (RoBERTa: includes its offset).
    type_vocab_size: token types (BERT 2, RoBERTa 1, MPNet 0: no token-type table).
    layer_norm_eps: epsilon of every layer norm.
    pad_token_id: id of [PAD]; RoBERTa and MPNet derive position ids from it.
    relative_attention_num_buckets: rows of MPNet's relative attention bias table [buckets, heads]; 0 for
      architectures without one.
    DeBERTa (names as in its config.json):
    relative_attention: disentangled attention on (v1 and v2 checkpoints all have it).
    max_relative_positions: the relative distance span k; -1 means max_position_embeddings.
    position_buckets: v2's log buckets (k = position_buckets); -1 for none (v1: always none).
    pos_att_type: which disentangled terms, a subset of ('c2p', 'p2c').
    share_att_key: v2: positions are projected with the layer's own query and key weights.
    norm_rel_ebd: v2: a layer norm on the relative embeddings.
    conv_kernel_size, conv_groups, conv_act: v2's convolution beside the first layer; kernel 0 for none.
    position_biased_input: absolute position embeddings added to the input (BERT-style); False in v3.
    hidden_dropout: dropout on embeddings and sublayer outputs (training only).
    attention_dropout: dropout on attention probabilities (training only).
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters always stay float32.
    head_kinds: None (every head softmax) or, per layer, a tuple of per-head kernel names from
      HEAD_KINDS. 'constant' heads use a given matrix and compute no query or key; 'mixed' heads
      gate softmax against constant attention (PAPA's ranking run).
    kernels: which form of the tuned computations runs (encoder_jax.tuning.pick): 'cpu_tuned' (the forms CPU
      profiles chose: fused softmax normalised after the value matmul, DeBERTa's relative term one head at a
      time, MPNet's bias as a one-hot matmul, bias gradients as matmuls), 'portable' (their straightforward
      twins, and softmax attention through jax.nn.dot_product_attention where no probabilities are returned
      and no attention dropout runs), or 'auto' (CPU-tuned where the program is lowered for a CPU, portable
      elsewhere). All forms compute the same values up to float rounding.
  """

  model_type: str = 'bert'
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  relative_attention_num_buckets: int = 0
  relative_attention: bool = False
  max_relative_positions: int = -1
  position_buckets: int = -1
  pos_att_type: tuple[str, ...] = ()
  share_att_key: bool = False
  norm_rel_ebd: bool = False
  conv_kernel_size: int = 0
  conv_groups: int = 1
  conv_act: str = 'tanh'
  position_biased_input: bool = True
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  dtype: str = 'float32'
  head_kinds: tuple[tuple[str, ...], ...] | None = None
  kernels: str = 'auto'

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f'Unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.')
    if self.type_vocab_size < 0:
      raise ValueError(f'type_vocab_size must be >= 0, got {self.type_vocab_size}.')
    if self.model_type == 'mpnet' and self.relative_attention_num_buckets < MPNET_BUCKETS:
      raise ValueError(f'MPNet buckets relative positions into {MPNET_BUCKETS} buckets; '
                       f'relative_attention_num_buckets={self.relative_attention_num_buckets} is too small.')
    if self.model_type in DEBERTA_TYPES:
      self._check_deberta()
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    if self.kernels not in KERNEL_FORMS:
      raise ValueError(f'kernels must be one of {KERNEL_FORMS}, got {self.kernels!r}.')
    if self.head_kinds is not None:
      if len(self.head_kinds) != self.num_layers:
        raise ValueError(f'head_kinds has {len(self.head_kinds)} layers; the model has {self.num_layers}.')
      for layer, kinds in enumerate(self.head_kinds):
        if len(kinds) != self.num_heads or any(k not in HEAD_KINDS for k in kinds):
          raise ValueError(f'head_kinds[{layer}] must be {self.num_heads} names from {HEAD_KINDS}, got {kinds}.')

  def _check_deberta(self):
    if set(self.pos_att_type) - {'c2p', 'p2c'}:
      raise ValueError(f"pos_att_type must be a subset of ('c2p', 'p2c'), got {self.pos_att_type}.")
    if self.model_type == 'deberta' and (self.position_buckets > 0 or self.share_att_key or self.norm_rel_ebd
                                         or self.conv_kernel_size):
      raise ValueError('position_buckets, share_att_key, norm_rel_ebd and the convolution are DeBERTa v2 '
                       "features; use model_type='deberta-v2'.")
    if self.conv_kernel_size and (self.conv_kernel_size % 2 == 0 or self.hidden_size % self.conv_groups
                                  or self.conv_act not in CONV_ACTS):
      raise ValueError(f'conv_kernel_size must be odd, conv_groups divide hidden_size and conv_act be one of '
                       f'{CONV_ACTS}; got {self.conv_kernel_size}, {self.conv_groups}, {self.conv_act!r}.')

  @property
  def disentangled(self) -> bool:
    """DeBERTa's relative position scores are on."""
    return self.model_type in DEBERTA_TYPES and self.relative_attention and bool(self.pos_att_type)

  @property
  def score_scale_factor(self) -> int:
    """DeBERTa divides content scores by sqrt(head_dim * this): 1 + the terms pos_att_type names, whether or not
    relative_attention computes them (transformers' scale_factor, v1 and v2); 1 for the other families."""
    return 1 + len(self.pos_att_type) if self.model_type in DEBERTA_TYPES else 1

  @property
  def attention_span(self) -> int:
    """DeBERTa's k: relative distances are clipped to [-k, k); the relative table has 2k rows."""
    if self.position_buckets > 0:
      return self.position_buckets
    return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def position_offset(self) -> int:
    """RoBERTa and MPNet number positions from pad_token_id + 1; BERT from 0."""
    return self.pad_token_id + 1 if self.model_type in _PADDING_OFFSET_TYPES else 0

  @property
  def max_length(self) -> int:
    """The longest sequence the position table allows."""
    return self.max_position_embeddings - self.position_offset

  def kinds(self, layer: int) -> tuple[str, ...]:
    """Kernel name of every head of `layer`."""
    if self.head_kinds is None:
      return ('softmax',) * self.num_heads
    return tuple(self.head_kinds[layer])

  def uses_constants(self) -> bool:
    return self.head_kinds is not None and any(k != 'softmax' for ks in self.head_kinds for k in ks)

  def replace(self, **changes: Any) -> 'EncoderConfig':
    return dataclasses.replace(self, **changes)

  def with_heads(self, kind: str, heads: Sequence[tuple[int, int]] | str) -> 'EncoderConfig':
    """Returns a copy where the given (layer, head) pairs, or 'all', use kernel `kind`."""
    kinds = [list(self.kinds(l)) for l in range(self.num_layers)]
    if heads == 'all':
      heads = [(l, h) for l in range(self.num_layers) for h in range(self.num_heads)]
    for layer, head in heads:
      if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
        raise ValueError(f'Head ({layer}, {head}) is outside {self.num_layers} layers x {self.num_heads} heads.')
      kinds[layer][head] = kind
    return self.replace(head_kinds=tuple(tuple(k) for k in kinds))

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides: Any) -> 'EncoderConfig':
    """From the dict of a Hugging Face config.json."""
    model_type = hf.get('model_type')
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f'Unsupported model_type {model_type!r} in config.json; supported: {SUPPORTED_MODEL_TYPES}.')
    act = hf.get('hidden_act', 'gelu')
    if act != 'gelu':
      raise ValueError(f"Only hidden_act='gelu' (exact erf GELU) is supported, got {act!r}.")
    pet = hf.get('position_embedding_type', 'absolute')
    if pet != 'absolute':
      raise ValueError(f"Only position_embedding_type='absolute' is supported, got {pet!r}.")
    fields = dict(
        model_type=model_type,
        vocab_size=hf['vocab_size'],
        hidden_size=hf['hidden_size'],
        num_layers=hf['num_hidden_layers'],
        num_heads=hf['num_attention_heads'],
        intermediate_size=hf['intermediate_size'],
        max_position_embeddings=hf['max_position_embeddings'],
        type_vocab_size=0 if model_type == 'mpnet' else hf.get('type_vocab_size', 2),
        layer_norm_eps=hf.get('layer_norm_eps', 1e-7 if model_type in DEBERTA_TYPES else 1e-12),
        pad_token_id=hf.get('pad_token_id', 0) or 0,
        hidden_dropout=hf.get('hidden_dropout_prob', 0.1),
        attention_dropout=hf.get('attention_probs_dropout_prob', 0.1),
    )
    if model_type == 'mpnet':
      fields['relative_attention_num_buckets'] = hf.get('relative_attention_num_buckets', MPNET_BUCKETS)
    if model_type in DEBERTA_TYPES:
      fields.update(_deberta_fields(hf))
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> 'EncoderConfig':
    with open(path) as f:
      return cls.from_hf(json.load(f), **overrides)


def _deberta_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """DeBERTa's extra config.json fields, with Hugging Face's defaults and spellings ('c2p|p2c' or a list)."""
  if hf.get('talking_head'):
    raise ValueError('DeBERTa talking_head is not supported.')
  if hf.get('embedding_size', hf['hidden_size']) != hf['hidden_size']:
    raise ValueError(f"DeBERTa embedding_size {hf['embedding_size']} != hidden_size is not supported.")
  pos = hf.get('pos_att_type') or ()
  if isinstance(pos, str):
    pos = [x.strip() for x in pos.lower().split('|')]
  norm = [x.strip() for x in str(hf.get('norm_rel_ebd', 'none')).lower().split('|')]
  return dict(
      type_vocab_size=hf.get('type_vocab_size', 0),
      relative_attention=bool(hf.get('relative_attention', False)),
      max_relative_positions=hf.get('max_relative_positions', -1),
      position_buckets=hf.get('position_buckets', -1),
      pos_att_type=tuple(pos),
      share_att_key=bool(hf.get('share_att_key', False)),
      norm_rel_ebd='layer_norm' in norm,
      conv_kernel_size=hf.get('conv_kernel_size', 0),
      conv_groups=hf.get('conv_groups', 1),
      conv_act=hf.get('conv_act', 'tanh'),
      position_biased_input=bool(hf.get('position_biased_input', True)),
  )
