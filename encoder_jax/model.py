"""The pure-functional encoder (Flax Linen) every architecture shares, and its functional entry points.

One embedding layer and one post-layer-norm block serve BERT, RoBERTa, MPNet, DeBERTa (v1) and DeBERTa
v2/v3: what a family adds (position ids, a score term, parameters all layers share, DeBERTa's convolution)
comes from encoder_jax/architectures, chosen once from config.model_type; this module knows no family.

Parameters are plain nested dicts:
  {'embeddings': {'word_embeddings': {'embedding': [vocab, H]},
                  'position_embeddings' (absent when not position_biased_input: DeBERTa v3),
                  'token_type_embeddings' (absent when type_vocab_size is 0: MPNet, DeBERTa v3),
                  'layer_norm': {'scale', 'bias'}},
   'layers_0': {'query'|'key'|'value': {'kernel': [H, heads, head_dim], 'bias': [heads, head_dim]} (no key
                'bias' where the family has none: DeBERTa v1),
                'attention_output': {'kernel': [heads, head_dim, H], 'bias': [H]},
                'attention_layer_norm', 'intermediate': {'kernel': [H, I], 'bias'},
                'output': {'kernel': [I, H], 'bias'}, 'output_layer_norm',
                what the family adds to a layer (DeBERTa: 'pos_query'|'pos_key' unless share_att_key;
                v2's 'conv' and 'conv_layer_norm' in layer 0)},
   ..., 'layers_{n-1}': ...,
   'relative': parameters all layers share (MPNet: {'embedding': [buckets, heads]}; DeBERTa: {'embedding':
               [2k, H]} and v2's 'layer_norm'); absent for BERT/RoBERTa}
Per-head kernels keep head selection (constant heads) a static slice of the weights; the query, key and
value weights are fused into one matmul at trace time.

Non-trainable inputs are arguments, never parameters:
  constants: [layers, heads, L, L] PAPA matrices, used by 'constant' and 'mixed' heads;
  gates:     [layers, heads] logits of 'mixed' heads (PAPA's lambdas; trainable by the caller).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import attention
from encoder_jax.architectures import Family, family
from encoder_jax.blocks import Table, Weights, dense, gelu, take
from encoder_jax.config import EncoderConfig

Params = dict[str, Any]
SHARED = 'relative'  # the params key of what all layers share (MPNet's bias, DeBERTa's relative embeddings)


def _dtype(config: EncoderConfig):
  return jnp.dtype(config.dtype)


class Embeddings(nn.Module):
  config: EncoderConfig
  family: Family

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, deterministic):
    """input_ids, attention_mask, token_type_ids: [batch, seq] -> [batch, seq, H] in the compute dtype."""
    cfg = self.config
    seq = input_ids.shape[1]
    if seq > cfg.max_length:
      raise ValueError(f'Sequence length {seq} exceeds the position table ({cfg.max_length} positions).')
    embed = lambda n, name, ids: _lookup(Table((n, cfg.hidden_size), name=name)(), ids)
    x = embed(cfg.vocab_size, 'word_embeddings', input_ids)
    if cfg.position_biased_input:  # DeBERTa v3 has no absolute positions
      x = x + embed(cfg.max_position_embeddings, 'position_embeddings', self.family.position_ids(cfg, input_ids))
    if cfg.type_vocab_size:  # MPNet and DeBERTa v3 have no token types
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + embed(cfg.type_vocab_size, 'token_type_embeddings', token_type_ids)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name='layer_norm')(x)
    x = self.family.embedding_output(cfg, x, attention_mask)
    x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    return x.astype(_dtype(cfg))


def _lookup(table, ids):
  """table [rows, H] at ids [batch, seq] -> [batch, seq, H].

  Under a mesh with explicit axes (jax.make_mesh's default) a gather from a replicated table by sharded
  ids has no unambiguous output sharding, so it is given: the ids' sharding, features replicated.
  """
  sharding = jax.typeof(ids).sharding
  mesh = getattr(sharding, 'mesh', None)
  if mesh is not None and any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*sharding.spec, None))
    return table.at[ids].get(out_sharding=out)
  return jnp.take(table, ids, axis=0)


class Layer(nn.Module):
  """One post-layer-norm transformer block; its heads' kernels come from config.kinds(index), what its
  architecture adds from `family`."""
  config: EncoderConfig
  index: int
  family: Family

  @nn.compact
  def __call__(self, hidden, mask, constants, gates, deterministic, return_attention, position=None):
    """hidden: [batch, seq, H]; mask: [batch, seq] -> ([batch, seq, H], probs [batch, heads, seq, seq] | None).

    position: what the encoder computed once for all layers from the family's shared parameters (MPNet:
    the score bias [heads, seq, seq]; DeBERTa: the relative embeddings [2k, H]), or None.
    """
    cfg = self.config
    dtype = _dtype(cfg)
    n, d, h = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    kinds = cfg.kinds(self.index)
    groups = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in attention.KERNELS}
    order = [i for kind in attention.KERNELS for i in groups[kind]]  # heads grouped by kind
    qk_heads = groups['softmax'] + groups['mixed']  # constant heads need no query and no key
    (wq, bq), (wk, bk), (wv, bv) = (Weights((h, n, d), (n, d), use_bias=self.family.biased(cfg, name), name=name)()
                                    for name in ('query', 'key', 'value'))
    wo, bo = Weights((n, d, h), (h,), name='attention_output')()

    # One fused projection; heads are selected by a static slice of the weights, so the query and key
    # weights of constant heads are never read and get exactly zero gradient.
    kernel = jnp.concatenate([take(wq, qk_heads, 1), take(wk, qk_heads, 1), take(wv, order, 1)], axis=1)
    bias = jnp.concatenate([take(bq, qk_heads, 0), take(bk, qk_heads, 0), take(bv, order, 0)], axis=0)
    x = hidden.astype(dtype)
    nq = len(qk_heads)
    qkv = dense(x, kernel.reshape(h, -1).astype(dtype), bias.reshape(-1).astype(dtype), cfg.kernels)
    qkv = qkv.reshape(*x.shape[:2], 2 * nq + n, d)
    q, k, v = qkv[:, :, :nq], qkv[:, :, nq:2 * nq], qkv[:, :, 2 * nq:]

    score_bias = None
    if qk_heads:
      q, score_bias = self.family.score_terms(cfg, q, k, position, qk_heads, (wq, bq), (wk, bk), deterministic)
    dropout = None
    if not deterministic and cfg.attention_dropout > 0:
      dropout = lambda p: nn.Dropout(cfg.attention_dropout)(p, deterministic=False)
    context, probs = self._attend(groups, q, k, v, mask, score_bias, constants, gates, dropout, return_attention)

    context = context.reshape(*x.shape[:2], n * d)
    attn = dense(context, take(wo, order, 0).reshape(n * d, h).astype(dtype), bo.astype(dtype), cfg.kernels)
    attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name='attention_layer_norm')(attn + x)

    w1, b1 = Weights((h, cfg.intermediate_size), (cfg.intermediate_size,), name='intermediate')()
    w2, b2 = Weights((cfg.intermediate_size, h), (h,), name='output')()
    y = gelu(dense(x, w1.astype(dtype), b1.astype(dtype), cfg.kernels))
    y = nn.Dropout(cfg.hidden_dropout)(dense(y, w2.astype(dtype), b2.astype(dtype), cfg.kernels),
                                       deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name='output_layer_norm')(y + x)
    x = self.family.after_layer(cfg, self.index, hidden.astype(dtype), x, mask, deterministic)

    if not return_attention:
      return x, None
    grouped = jnp.concatenate(probs, axis=1) if len(probs) > 1 else probs[0]
    return x, grouped[:, [order.index(i) for i in range(n)]]  # back to head order

  def _attend(self, groups, q, k, v, mask, score_bias, constants, gates, dropout, return_attention):
    """Each kind's kernel on its group of heads: -> (context [batch, seq, heads, d] in grouped head order,
    [probs per group, or None]). q, k: [batch, seq, query/key heads, d]; v: [batch, seq, heads, d], both in
    grouped order (constant heads have no query or key)."""
    contexts, probs, vstart, qstart = [], [], 0, 0
    for kind, kernel_fn in attention.KERNELS.items():
      heads = groups[kind]
      if not heads:
        continue
      qs = slice(qstart, qstart + len(heads))
      has_qk = kind != 'constant'
      ctx, pr = kernel_fn(
          q[:, :, qs] if has_qk else None, k[:, :, qs] if has_qk else None,
          v[:, :, vstart:vstart + len(heads)], mask,
          constant=None if kind == 'softmax' else _rows(constants, self.index, heads, 'constants'),
          gate=_rows(gates, self.index, heads, 'gates') if kind == 'mixed' else None,
          dropout=dropout, return_probs=return_attention,
          bias=score_bias[..., qs, :, :] if has_qk and score_bias is not None else None,
          kernels=self.config.kernels)
      contexts.append(ctx)
      probs.append(pr)
      vstart += len(heads)
      qstart += len(heads) if has_qk else 0
    return (jnp.concatenate(contexts, axis=2) if len(contexts) > 1 else contexts[0]), probs


def _rows(table, layer, heads, name):
  """table[layer] at the given heads: [len(heads), ...]. `table` may be a numpy or a jax array."""
  if table is None:
    raise ValueError(f'Layer {layer} has heads {heads} that are not softmax, so apply needs `{name}`.')
  # jnp.asarray first: a numpy table indexed by a jax array would try to convert a tracer under jit.
  return jnp.asarray(table)[layer][np.asarray(heads, dtype=np.int32)]


class Encoder(nn.Module):
  """Embeddings and a stack of layers; any contiguous range of layers can be run on its own."""
  config: EncoderConfig

  def setup(self):
    arch = family(self.config)  # chosen once; layers and embeddings call its hooks
    self.embeddings = Embeddings(self.config, arch)
    self.layers = [Layer(self.config, i, arch) for i in range(self.config.num_layers)]
    # Parameters shared by all layers live under SHARED ('relative'); SWEET gives each segment a copy.
    self.relative = arch.shared(self.config)

  def embed(self, input_ids, attention_mask, token_type_ids=None, deterministic=True):
    """input_ids, attention_mask, token_type_ids: [batch, seq] -> [batch, seq, H]."""
    return self.embeddings(input_ids, attention_mask, token_type_ids, deterministic)

  def run_layers(self, hidden, attention_mask, start, stop, constants=None, gates=None,
                 deterministic=True, return_attention=False):
    """Layers start..stop-1 on hidden [batch, seq, H].

    Returns (hidden states after each layer, attention probabilities of each layer or None).
    """
    if not 0 <= start <= stop <= self.config.num_layers:
      raise ValueError(f'Layer range [{start}, {stop}) is outside 0..{self.config.num_layers}.')
    hiddens, attentions = [], []
    position = self.relative(hidden.shape[1]) if self.relative is not None and start < stop else None
    for i in range(start, stop):
      hidden, probs = self.layers[i](hidden, attention_mask, constants, gates, deterministic, return_attention,
                                     position)
      hiddens.append(hidden)
      attentions.append(probs)
    return tuple(hiddens), (tuple(attentions) if return_attention else None)

  def __call__(self, input_ids, attention_mask, token_type_ids=None, constants=None, gates=None,
               deterministic=True, return_attention=False):
    """All hidden states, embeddings first: num_layers + 1 arrays [batch, seq, H] (and attentions)."""
    hidden = self.embed(input_ids, attention_mask, token_type_ids, deterministic)
    hiddens, attentions = self.run_layers(hidden, attention_mask, 0, self.config.num_layers, constants, gates,
                                          deterministic, return_attention)
    return (hidden,) + hiddens, attentions


# Functional entry points. `rng` None means deterministic (no dropout); a key turns dropout on.

def _rngs(rng):
  return None if rng is None else {'dropout': rng}


def init_params(config: EncoderConfig, rng: jax.Array, seq: int = 8) -> Params:
  """Randomly initialised parameters (BERT's normal(0.02) initialisation)."""
  ids = jnp.zeros((1, seq), jnp.int32)
  variables = Encoder(config.replace(head_kinds=None)).init(rng, ids, jnp.ones_like(ids))
  return flax.core.unfreeze(variables["params"])


def encode(config: EncoderConfig, params: Params, input_ids, attention_mask, token_type_ids=None, *,
           constants=None, gates=None, rng=None, return_attention=False):
  """Every hidden state, embeddings first: a tuple of num_layers + 1 arrays [batch, seq, H].

  With return_attention, returns (hidden_states, attentions), attentions a tuple of
  [batch, heads, seq, seq] per layer.
  """
  hiddens, attentions = Encoder(config).apply(
      {'params': params}, input_ids, attention_mask, token_type_ids, constants, gates,
      deterministic=rng is None, return_attention=return_attention, rngs=_rngs(rng))
  return (hiddens, attentions) if return_attention else hiddens


def embed(config: EncoderConfig, params: Params, input_ids, attention_mask, token_type_ids=None, *, rng=None):
  """The embedding layer alone: [batch, seq] ids -> [batch, seq, H]."""
  return Encoder(config).apply({'params': params}, input_ids, attention_mask, token_type_ids,
                               deterministic=rng is None, method=Encoder.embed, rngs=_rngs(rng))


def run_layers(config: EncoderConfig, params: Params, hidden, attention_mask, start: int, stop: int, *,
               constants=None, gates=None, rng=None, return_attention=False):
  """Layers start..stop-1 (0-indexed) on hidden [batch, seq, H]: the building block of exits.

  Returns the tuple of hidden states after each layer in the range (and, with return_attention,
  the tuple of their attention probabilities). `params` needs only the layers in the range.
  """
  hiddens, attentions = Encoder(config).apply(
      {'params': params}, hidden, attention_mask, start, stop, constants, gates,
      deterministic=rng is None, return_attention=return_attention, method=Encoder.run_layers,
      rngs=_rngs(rng))
  return (hiddens, attentions) if return_attention else hiddens
