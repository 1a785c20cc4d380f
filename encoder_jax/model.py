"""The pure-functional BERT/RoBERTa/MPNet encoder (Flax Linen) and its functional entry points.

Parameters are plain nested dicts:
  {'embeddings': {'word_embeddings': {'embedding': [vocab, H]}, 'position_embeddings': ...,
                  'token_type_embeddings' (not MPNet): ..., 'layer_norm': {'scale', 'bias'}},
   'layers_0': {'query'|'key'|'value': {'kernel': [H, heads, head_dim], 'bias': [heads, head_dim]},
                'attention_output': {'kernel': [heads, head_dim, H], 'bias': [H]},
                'attention_layer_norm', 'intermediate': {'kernel': [H, I], 'bias'},
                'output': {'kernel': [I, H], 'bias'}, 'output_layer_norm'},
   ..., 'layers_{n-1}': ...,
   'relative': parameters all layers share (MPNet: {'embedding': [buckets, heads]}); absent for BERT/RoBERTa}
Per-head kernels keep head selection (constant heads) a static slice of the weights; the query, key and
value weights are fused into one matmul at trace time.

Non-trainable inputs are arguments, never parameters:
  constants: [layers, heads, L, L] PAPA matrices, used by 'constant' and 'mixed' heads;
  gates:     [layers, heads] logits of 'mixed' heads (PAPA's lambdas; trainable by the caller).
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import attention, relative
from encoder_jax.config import DEBERTA_TYPES, EncoderConfig

Params = dict[str, Any]
SHARED = 'relative'  # the params key of what all layers share (MPNet's relative attention bias)
_init = nn.initializers.normal(stddev=0.02)


def _dtype(config: EncoderConfig):
  return jnp.dtype(config.dtype)


class Embeddings(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, deterministic):
    cfg = self.config
    seq = input_ids.shape[1]
    if seq > cfg.max_length:
      raise ValueError(f'Sequence length {seq} exceeds the position table ({cfg.max_length} positions).')
    if cfg.position_offset:
      # Hugging Face's create_position_ids_from_input_ids: real tokens count up from pad_token_id + 1.
      real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
      positions = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
    else:
      positions = jnp.broadcast_to(jnp.arange(seq), input_ids.shape)
    embed = lambda n, name, ids: _lookup(Table((n, cfg.hidden_size), name=name)(), ids)
    x = embed(cfg.vocab_size, 'word_embeddings', input_ids)
    if cfg.position_biased_input:  # DeBERTa v3 has no absolute positions
      x = x + embed(cfg.max_position_embeddings, 'position_embeddings', positions)
    if cfg.type_vocab_size:  # MPNet and DeBERTa v3 have no token types
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + embed(cfg.type_vocab_size, 'token_type_embeddings', token_type_ids)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name='layer_norm')(x)
    if cfg.model_type in DEBERTA_TYPES:  # DeBERTa zeroes padded positions (its convolution reads them)
      x = x * attention_mask.astype(x.dtype)[..., None]
    x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    return x.astype(_dtype(cfg))


class Table(nn.Module):
  """An embedding table [rows, H] under the name Flax's nn.Embed uses ('embedding')."""
  shape: tuple[int, int]

  @nn.compact
  def __call__(self):
    return self.param('embedding', _init, self.shape)


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


class Weights(nn.Module):
  """A kernel and a bias, under the names nn.Dense uses; the layer does the arithmetic itself.

  The attention projections are per head: kernel [in, heads, head_dim] and bias [heads, head_dim] (the
  output projection [heads, head_dim, out]), so that choosing heads is a static slice of the weights.
  """
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return (self.param('kernel', _init, self.kernel_shape),
            self.param('bias', nn.initializers.zeros, self.bias_shape))


class Layer(nn.Module):
  """One post-layer-norm transformer block; its heads' kernels come from config.kinds(index)."""
  config: EncoderConfig
  index: int

  @nn.compact
  def __call__(self, hidden, mask, constants, gates, deterministic, return_attention, position=None):
    """hidden: [batch, seq, H]; mask: [batch, seq] -> ([batch, seq, H], probs [batch, heads, seq, seq] | None).

    position: what the encoder computed once for all layers from its shared relative-position parameters
    (MPNet: the score bias [heads, seq, seq]), or None.
    """
    cfg = self.config
    dtype = _dtype(cfg)
    n, d, h = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    kinds = cfg.kinds(self.index)
    groups = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in attention.KERNELS}
    order = [i for kind in attention.KERNELS for i in groups[kind]]  # heads grouped by kind
    qk_heads = groups['softmax'] + groups['mixed']  # constant heads need no query and no key
    wq, bq = Weights((h, n, d), (n, d), name='query')()
    wk, bk = Weights((h, n, d), (n, d), name='key')()
    wv, bv = Weights((h, n, d), (n, d), name='value')()
    wo, bo = Weights((n, d, h), (h,), name='attention_output')()

    # One fused projection; heads are selected by a static slice of the weights, so the query and key
    # weights of constant heads are never read and get exactly zero gradient.
    kernel = jnp.concatenate([_take(wq, qk_heads, 1), _take(wk, qk_heads, 1), _take(wv, order, 1)], axis=1)
    bias = jnp.concatenate([_take(bq, qk_heads, 0), _take(bk, qk_heads, 0), _take(bv, order, 0)], axis=0)
    x = hidden.astype(dtype)
    nq = len(qk_heads)
    qkv = _dense(x, kernel.reshape(h, -1).astype(dtype), bias.reshape(-1).astype(dtype))
    qkv = qkv.reshape(*x.shape[:2], 2 * nq + n, d)
    q, k, v = qkv[:, :, :nq], qkv[:, :, nq:2 * nq], qkv[:, :, 2 * nq:]

    q, score_bias = self._score_terms(q, k, position, qk_heads, (wq, bq), (wk, bk), deterministic)
    dropout = None
    if not deterministic and cfg.attention_dropout > 0:
      dropout = lambda p: nn.Dropout(cfg.attention_dropout)(p, deterministic=False)
    context, probs = self._attend(groups, q, k, v, mask, score_bias, constants, gates, dropout, return_attention)

    context = context.reshape(*x.shape[:2], n * d)
    attn = _dense(context, _take(wo, order, 0).reshape(n * d, h).astype(dtype), bo.astype(dtype))
    attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name='attention_layer_norm')(attn + x)

    w1, b1 = Weights((h, cfg.intermediate_size), (cfg.intermediate_size,), name='intermediate')()
    w2, b2 = Weights((cfg.intermediate_size, h), (h,), name='output')()
    y = _gelu(_dense(x, w1.astype(dtype), b1.astype(dtype)))
    y = nn.Dropout(cfg.hidden_dropout)(_dense(y, w2.astype(dtype), b2.astype(dtype)), deterministic=deterministic)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name='output_layer_norm')(y + x)
    if self.index == 0 and cfg.conv_kernel_size:
      x = self._conv(hidden.astype(dtype), x, mask, deterministic)

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
          bias=score_bias[..., qs, :, :] if has_qk and score_bias is not None else None)
      contexts.append(ctx)
      probs.append(pr)
      vstart += len(heads)
      qstart += len(heads) if has_qk else 0
    return (jnp.concatenate(contexts, axis=2) if len(contexts) > 1 else contexts[0]), probs

  def _score_terms(self, q, k, position, qk_heads, query, key, deterministic):
    """What the architecture adds to the scores of the query/key heads: -> (q for the kernel, score term
    [nq, seq, seq] or [batch, nq, seq, seq], or None).

    MPNet: its shared bias at these heads. DeBERTa: the relative embeddings [2k, H] projected per head (by
    the layer's query/key weights when share_att_key, else by its own pos_query/pos_key), then the
    content-to-position and position-to-content scores; the content score is divided by sqrt(d * (1 +
    terms)), so q is scaled by 1/sqrt(1 + terms) (the kernel divides by sqrt(d)).
    """
    cfg = self.config
    if position is None or not qk_heads:  # DeBERTa's scale counts pos_att_type even with no term computed
      return (q if cfg.score_scale_factor == 1 or not qk_heads else
              q * jnp.asarray(1.0 / math.sqrt(cfg.score_scale_factor), q.dtype)), None
    if cfg.model_type == 'mpnet':
      return q, _take(position, qk_heads, 0)
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    rel = nn.Dropout(cfg.hidden_dropout)(position, deterministic=deterministic).astype(q.dtype)
    project = lambda w, b: jnp.einsum('rh,hnd->rnd', rel, _take(w, qk_heads, 1).astype(q.dtype)) + _take(
        b, qk_heads, 0).astype(q.dtype)
    pos_query = pos_key = None
    if 'c2p' in cfg.pos_att_type:
      pos_key = project(*(key if cfg.share_att_key else Weights((h, n, d), (n, d), name='pos_key')()))
    if 'p2c' in cfg.pos_att_type:
      pos_query = project(*(query if cfg.share_att_key else Weights((h, n, d), (n, d), name='pos_query')()))
    terms = relative.disentangled_scores(cfg, q, k, pos_query, pos_key)
    return q * jnp.asarray(1.0 / math.sqrt(cfg.score_scale_factor), q.dtype), terms

  def _conv(self, embedded, x, mask, deterministic):
    """DeBERTa v2's convolution beside the first layer: LN(x + act(conv(embeddings))) on real tokens.

    embedded, x: [batch, seq, H] (the layer's input and output); the kernel is [width, H / groups, H].
    """
    cfg = self.config
    h = cfg.hidden_size
    w, b = Weights((cfg.conv_kernel_size, h // cfg.conv_groups, h), (h,), name='conv')()
    pad = (cfg.conv_kernel_size - 1) // 2
    out = jax.lax.conv_general_dilated(embedded, w.astype(x.dtype), (1,), [(pad, pad)],
                                       dimension_numbers=('NWC', 'WIO', 'NWC'),
                                       feature_group_count=cfg.conv_groups) + b.astype(x.dtype)
    real = mask.astype(x.dtype)[..., None]
    out = nn.Dropout(cfg.hidden_dropout)(out * real, deterministic=deterministic)
    out = jnp.tanh(out) if cfg.conv_act == 'tanh' else _gelu(out)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=x.dtype, name='conv_layer_norm')(x + out) * real


def _dense(x, kernel, bias):
  """x [batch, seq, in] @ kernel [in, out] + bias [out], as one 2-D matmul over all tokens.

  Flattening the tokens first matters for training on CPU: the weight gradient becomes a single
  [in, tokens] x [tokens, out] product that XLA runs directly, where with 3-D operands it transposed the
  [tokens, out] gradient into a copy and then used a slower matmul (about 17% of a feed-forward block's
  train step).
  """
  y = _add_bias(x.reshape(-1, x.shape[-1]) @ kernel, bias)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


@jax.custom_jvp
def _add_bias(y, bias):
  """y [tokens, out] + bias [out]; the same sum, with a derivative rule that makes the bias gradient a
  matmul (ones [1, tokens] @ dy) instead of a column reduction, which XLA's CPU backend splits into
  slow windowed reductions (about 3% of a train step without YNNPACK fusions)."""
  return y + bias


@_add_bias.defjvp
def _add_bias_jvp(primals, tangents):
  y, bias = primals
  dy, dbias = tangents
  ones = jnp.ones((y.shape[0], 1), dbias.dtype)
  return y + bias, dy + ones @ dbias[None, :]  # linear in dbias through a dot, so its transpose is one


def _gelu(x):
  """Exact (erf) GELU, written as torch and Hugging Face write it.

  jax.nn.gelu(approximate=False) uses erfc, which XLA lowers to a two-branch polynomial that takes 2-3x
  longer on CPU than its erf; over [batch, seq, intermediate] that is a visible part of a layer.
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))


def _take(w, heads, axis):
  """w restricted to `heads` along `axis`; no gather when that is every head in order."""
  if heads == list(range(w.shape[axis])):
    return w
  return jnp.take(w, jnp.asarray(heads, dtype=jnp.int32), axis=axis)


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
    self.embeddings = Embeddings(self.config)
    self.layers = [Layer(self.config, i) for i in range(self.config.num_layers)]
    # Parameters shared by all layers live under SHARED ('relative'); SWEET gives each segment a copy.
    cfg = self.config
    self.relative = (relative.MPNetRelativeBias(cfg) if cfg.model_type == 'mpnet' else
                     relative.DebertaRelativeEmbeddings(cfg) if cfg.disentangled else None)

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
