"""Exit heads and the segmented forward pass of SWEET, Early-Exit and Multi-Model.

Exits sit after 1-indexed layers `exit_layers` (e.g. (1, 4, 6, 12)); they cut the encoder into segments,
segment i being layers exit_layers[i-1] .. exit_layers[i]-1 (0-indexed), segment 0 owning the embeddings.
Every exit owns its pooler and classifier (the reference shares the BERT pooler, which leaks gradient
across exits); how it pools ([CLS] or the masked mean) is configuration.

Params of an exit model:  {'encoder': encoder params (layers below the last exit), 'heads': (head_0, ...)}
  and, for SWEET on an architecture whose layers share parameters (encoder_jax.SHARED: MPNet's relative
  attention bias), 'segment_shared': (copy for segment 0, ...) in place of the encoder's own, so that each
  segment owns everything it computes with; Early-Exit keeps the model's own sharing.
Params of a multi-model:  {'models': ({'encoder': first k layers (+ shared), 'head': head}, ...)}
head = {'pooler': {'kernel': [H, H], 'bias': [H]}, 'classifier': {'kernel': [H, C], 'bias': [C]}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

import encoder_jax
from encoder_jax import EncoderConfig

POOLINGS = ('cls', 'mean')


@dataclasses.dataclass(frozen=True)
class ExitConfig:
  """Where the exits are and what they predict.

  Attributes:
    exit_layers: 1-indexed layers after which an exit sits, strictly increasing.
    num_labels: classes of the task.
    pooling: 'cls' (the papers, with BERT) or 'mean' (masked mean; what sentence encoders use).
    classifier_dropout: dropout on the pooled vector during training.
  """
  exit_layers: tuple[int, ...]
  num_labels: int
  pooling: str = 'cls'
  classifier_dropout: float = 0.1

  def __post_init__(self):
    layers = tuple(self.exit_layers)
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 1:
      raise ValueError(f'exit_layers must be strictly increasing 1-indexed layers, got {self.exit_layers}.')
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling must be one of {POOLINGS}, got {self.pooling!r}.')
    if self.num_labels < 2:
      raise ValueError(f'num_labels must be >= 2, got {self.num_labels}.')
    object.__setattr__(self, 'exit_layers', layers)

  @property
  def num_exits(self) -> int:
    return len(self.exit_layers)

  def segments(self) -> list[tuple[int, int]]:
    """0-indexed [start, stop) layer range of each segment: (1, 4, 6) -> [(0, 1), (1, 4), (4, 6)]."""
    return list(zip((0,) + self.exit_layers[:-1], self.exit_layers))

  def segment_of(self, layer: int) -> int:
    """The segment holding 0-indexed `layer`: (1, 4, 6) -> layer 0 in 0, layers 1..3 in 1, 4..5 in 2."""
    for i, stop in enumerate(self.exit_layers):
      if 0 <= layer < stop:
        return i
    raise ValueError(f'Layer {layer} (0-indexed) lies in no segment of exits {self.exit_layers}.')

  def check(self, encoder_config: EncoderConfig) -> None:
    if self.exit_layers[-1] > encoder_config.num_layers:
      raise ValueError(f'Exit after layer {self.exit_layers[-1]} but the encoder has {encoder_config.num_layers}.')


def init_head(rng: jax.Array, hidden_size: int, num_labels: int, pretrained_pooler=None) -> dict[str, Any]:
  """A pooler (dense + tanh) and a classifier; the pooler starts from the pretrained one when given."""
  k1, k2 = jax.random.split(rng)
  pooler = pretrained_pooler or {
      'kernel': 0.02 * jax.random.normal(k1, (hidden_size, hidden_size)), 'bias': jnp.zeros((hidden_size,))}
  return {
      'pooler': jax.tree.map(jnp.asarray, pooler),
      'classifier': {'kernel': 0.02 * jax.random.normal(k2, (hidden_size, num_labels)),
                     'bias': jnp.zeros((num_labels,))},
  }


def pool(hidden, mask, pooling: str):
  """hidden [batch, seq, H], mask [batch, seq] -> [batch, H]: the [CLS] vector or the masked mean."""
  if pooling == 'cls':
    return hidden[:, 0]
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1)


def apply_head(head, hidden, mask, pooling: str, *, dropout: float = 0.0, rng=None):
  """One exit: pool, dense + tanh, dropout (training only), classifier. -> logits [batch, C] float32."""
  x = pool(hidden, mask, pooling)
  x = jnp.tanh(x @ head['pooler']['kernel'].astype(x.dtype) + head['pooler']['bias'].astype(x.dtype))
  if rng is not None and dropout > 0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - dropout), 0.0)
  logits = x @ head['classifier']['kernel'].astype(x.dtype) + head['classifier']['bias'].astype(x.dtype)
  return logits.astype(jnp.float32)


def _layers(encoder_params, start: int, stop: int) -> dict[str, Any]:
  return {f'layers_{i}': encoder_params[f'layers_{i}'] for i in range(start, stop)}


def _encoder_part(encoder_params, stop: int) -> dict[str, Any]:
  """The embeddings, layers 0..stop-1 and what all layers share (when the architecture has it)."""
  part = {'embeddings': encoder_params['embeddings'], **_layers(encoder_params, 0, stop)}
  if encoder_jax.SHARED in encoder_params:
    part[encoder_jax.SHARED] = encoder_params[encoder_jax.SHARED]
  return part


def init_exit_model(rng, encoder_config: EncoderConfig, encoder_params, exit_config: ExitConfig, *,
                    segment_copies: bool = False):
  """SWEET / Early-Exit params: the pretrained encoder up to the last exit and one fresh head per exit.

  segment_copies (SWEET): parameters the layers share get one copy per segment ('segment_shared').
  """
  exit_config.check(encoder_config)
  keys = jax.random.split(rng, exit_config.num_exits)
  encoder = _encoder_part(encoder_params, exit_config.exit_layers[-1])
  heads = tuple(init_head(k, encoder_config.hidden_size, exit_config.num_labels, encoder_params.get('pooler'))
                for k in keys)
  params = {'encoder': encoder, 'heads': heads}
  if segment_copies and encoder_jax.SHARED in encoder:
    shared = encoder.pop(encoder_jax.SHARED)
    params['segment_shared'] = tuple(jax.tree.map(jnp.array, shared) for _ in range(exit_config.num_exits))
  return params


def segment_encoder(params, index: int) -> dict[str, Any]:
  """The encoder params segment `index` runs with: under SWEET, with its own copy of the shared ones."""
  if 'segment_shared' in params:
    return {**params['encoder'], encoder_jax.SHARED: params['segment_shared'][index]}
  return params['encoder']


def init_multi_model(rng, encoder_config: EncoderConfig, encoder_params, exit_config: ExitConfig):
  """Multi-Model params: for each exit k, an independent copy of the first k pretrained layers and a head."""
  exit_config.check(encoder_config)
  keys = jax.random.split(rng, exit_config.num_exits)
  copy = lambda tree: jax.tree.map(jnp.array, tree)  # own buffers: no model shares a parameter
  return {'models': tuple(
      {'encoder': copy(_encoder_part(encoder_params, k)),
       'head': init_head(key, encoder_config.hidden_size, exit_config.num_labels, encoder_params.get('pooler'))}
      for k, key in zip(exit_config.exit_layers, keys))}


def _labelled(tree, label) -> Any:
  """tree's structure with every leaf replaced by label."""
  return jax.tree.map(lambda _: label, tree)


def exit_model_groups(exit_config: ExitConfig, params) -> dict[str, Any]:
  """SWEET's parameter groups: a tree of params' structure labelling every leaf with its segment index;
  the embeddings belong to segment 0 and head i to segment i (what exit i's loss alone reaches)."""
  def label(name):
    if name == 'embeddings':
      return 0
    if not name.startswith('layers_'):
      raise ValueError(f"Unexpected encoder parameter {name!r}: expected 'embeddings' or 'layers_<i>'.")
    return exit_config.segment_of(int(name[len('layers_'):]))
  encoder = {name: _labelled(sub, label(name)) for name, sub in params['encoder'].items()}
  heads = tuple(_labelled(head, i) for i, head in enumerate(params['heads']))
  groups = {'encoder': encoder, 'heads': heads}
  if 'segment_shared' in params:  # segment i's own copy of what the layers share
    groups['segment_shared'] = tuple(_labelled(copy, i) for i, copy in enumerate(params['segment_shared']))
  return groups


def multi_model_groups(params) -> dict[str, Any]:
  """Multi-Model's parameter groups: every leaf of member i (encoder and head) labelled i."""
  return {'models': tuple(_labelled(model, i) for i, model in enumerate(params['models']))}


def _split(rng, n):
  return [None] * n if rng is None else list(jax.random.split(rng, n))


def segment_forward(encoder_config, exit_config, params, hidden, mask, index, *, constants=None, rng=None):
  """Segment `index` and its exit: hidden [batch, seq, H] entering the segment ->
  (hidden leaving it, logits [batch, C]). The step adaptive inference repeats."""
  start, stop = exit_config.segments()[index]
  r1, r2 = _split(rng, 2)
  hidden = encoder_jax.run_layers(encoder_config, segment_encoder(params, index), hidden, mask, start, stop,
                                  constants=constants, rng=r1)[-1]
  logits = apply_head(params['heads'][index], hidden, mask, exit_config.pooling,
                      dropout=exit_config.classifier_dropout, rng=r2)
  return hidden, logits


def forward(encoder_config, exit_config, params, batch, *, stop_gradient: bool, constants=None, rng=None):
  """All exits' logits [num_exits, batch, C] of a SWEET (stop_gradient=True) or Early-Exit model.

  With stop_gradient, the hidden state entering every segment after the first passes through
  jax.lax.stop_gradient, so exit i's loss reaches only segment i and head i.
  """
  rngs = _split(rng, exit_config.num_exits + 1)
  mask = batch['attention_mask']
  hidden = encoder_jax.embed(encoder_config, params['encoder'], batch['input_ids'], mask,
                             batch.get('token_type_ids'), rng=rngs[0])
  all_logits = []
  for i in range(exit_config.num_exits):
    if stop_gradient and i > 0:
      hidden = jax.lax.stop_gradient(hidden)
    hidden, logits = segment_forward(encoder_config, exit_config, params, hidden, mask, i,
                                     constants=constants, rng=rngs[i + 1])
    all_logits.append(logits)
  return jnp.stack(all_logits)


def model_forward(encoder_config, exit_config, model, batch, depth: int, *, constants=None, rng=None):
  """One Multi-Model member of `depth` layers on a batch, from the embeddings: logits [batch, C]."""
  r1, r2 = _split(rng, 2)
  hidden = encoder_jax.encode(depth_config(encoder_config, depth), model['encoder'], batch['input_ids'],
                              batch['attention_mask'], batch.get('token_type_ids'), constants=constants,
                              rng=r1)[-1]
  return apply_head(model['head'], hidden, batch['attention_mask'], exit_config.pooling,
                    dropout=exit_config.classifier_dropout, rng=r2)


def forward_multi_model(encoder_config, exit_config, params, batch, *, constants=None, rng=None):
  """Every Multi-Model member's logits [num_exits, batch, C]; each re-encodes from the embeddings."""
  rngs = _split(rng, exit_config.num_exits)
  return jnp.stack([
      model_forward(encoder_config, exit_config, model, batch, depth, constants=constants, rng=r)
      for model, depth, r in zip(params['models'], exit_config.exit_layers, rngs)])


def depth_config(encoder_config: EncoderConfig, depth: int) -> EncoderConfig:
  """The encoder config of a model truncated to `depth` layers (head kinds truncated with it)."""
  kinds = None if encoder_config.head_kinds is None else encoder_config.head_kinds[:depth]
  return encoder_config.replace(num_layers=depth, head_kinds=kinds)
