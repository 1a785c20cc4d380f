"""DeBERTa (v1) and DeBERTa v2/v3: disentangled attention and what comes with it.

Relative embeddings [2k, H] (v2: layer-normed) are shared by all layers; each layer projects them with its
own pos_query/pos_key weights (v2 with share_att_key: its query/key weights) and adds content-to-position
and position-to-content scores (disentangled_scores). v2 adds log buckets for distances and a convolution
beside the first layer; v3 drops absolute positions (EncoderConfig.position_biased_input). Every family
fact is a config field, so one Family serves both model types. Gather indices depend only on the sequence
length, so they are numpy constants at trace time.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import blocks, tuning
from encoder_jax.architectures.base import Family
from encoder_jax.config import EncoderConfig


def score_scale(config: EncoderConfig) -> float:
  """How many score terms share the softmax's temperature: content scores and each relative term are all
  divided by sqrt(head_dim * score_scale). Hugging Face's scale_factor, 1 + len(pos_att_type), counted
  whether or not relative_attention computes the terms (EncoderConfig.score_scale_factor)."""
  return config.score_scale_factor


class Deberta(Family):
  # DeBERTa v1's names after hf_import's split of its fused in_proj, q_bias, v_bias, pos_proj and pos_q_proj.
  HF_LAYER_NAMES = {
      **Family.HF_LAYER_NAMES, 'query': r'attention\.self\.query_proj', 'key': r'attention\.self\.key_proj',
      'value': r'attention\.self\.value_proj', 'pos_query': r'attention\.self\.pos_query_proj',
      'pos_key': r'attention\.self\.pos_key_proj',
  }
  HF_EXTRA_NAMES = (
      (r'encoder\.rel_embeddings\.weight', 'relative/embedding', 'id'),
      (r'encoder\.LayerNorm\.weight', 'relative/layer_norm/scale', 'id'),
      (r'encoder\.LayerNorm\.bias', 'relative/layer_norm/bias', 'id'),
      (r'encoder\.conv\.conv\.weight', 'layers_0/conv/kernel', 'conv'),  # beside the first layer
      (r'encoder\.conv\.conv\.bias', 'layers_0/conv/bias', 'id'),
      (r'encoder\.conv\.LayerNorm\.weight', 'layers_0/conv_layer_norm/scale', 'id'),
      (r'encoder\.conv\.LayerNorm\.bias', 'layers_0/conv_layer_norm/bias', 'id'),
  )
  """BERT's absolute positions (when position_biased_input), padding zeroed after the embedding layer
  norm, the disentangled score term, and v2's convolution beside layer 0."""

  def parameter_shapes(self, config):
    """The relative table (RelativeEmbeddings), each layer's own position projections (score_terms) and v2's
    convolution beside layer 0 (_conv)."""
    h, n, d = config.hidden_size, config.num_heads, config.head_dim
    shapes = {}
    if config.disentangled:
      shapes['relative/embedding'] = (2 * config.attention_span, h)
      if config.norm_rel_ebd:
        shapes['relative/layer_norm/scale'] = shapes['relative/layer_norm/bias'] = (h,)
      if not config.share_att_key:
        for l in range(config.num_layers):
          for term, name in (('c2p', 'pos_key'), ('p2c', 'pos_query')):
            if term in config.pos_att_type:
              shapes[f'layers_{l}/{name}/kernel'] = (h, n, d)
              if self.biased(config, name):
                shapes[f'layers_{l}/{name}/bias'] = (n, d)
    if config.conv_kernel_size:
      shapes['layers_0/conv/kernel'] = (config.conv_kernel_size, h // config.conv_groups, h)
      shapes['layers_0/conv/bias'] = shapes['layers_0/conv_layer_norm/scale'] = (h,)
      shapes['layers_0/conv_layer_norm/bias'] = (h,)
    return shapes

  def biased(self, config, projection):
    """DeBERTa v1's key and position-key projections have no bias (in_proj and pos_proj are bias-free; q_bias
    and v_bias are the only ones): a v1 encoder has none to train, which its transformers model could not hold."""
    return config.model_type != 'deberta' or projection not in ('key', 'pos_key')

  def from_hf_layout(self, tensors, config):
    return split_v1(tensors, config) if config.model_type == 'deberta' else (tensors, {})

  def to_hf_layout(self, tensors, config):
    return fuse_v1(tensors, config) if config.model_type == 'deberta' else tensors

  def unused_tensor(self, config, name):
    """DeBERTa's absolute position table when position_biased_input is off (its
    _keys_to_ignore_on_load_unexpected: microsoft/deberta-base ships one), and the relative table (and its layer
    norm) when relative_attention is on but pos_att_type names no term."""
    if name == 'embeddings.position_embeddings.weight' and not config.position_biased_input:
      return 'position_biased_input is false'
    if (re.fullmatch(r'encoder\.(rel_embeddings\.weight|LayerNorm\.(weight|bias))', name)
        and config.relative_attention and not config.disentangled):
      return 'pos_att_type names no relative term'
    return None

  def embedding_output(self, config, x, attention_mask):
    del config  # DeBERTa zeroes padded positions: its convolution reads them
    return x * attention_mask.astype(x.dtype)[..., None]

  def shared(self, config):
    return RelativeEmbeddings(config) if config.disentangled else None

  def score_terms(self, config, q, k, position, heads, query, key, deterministic):
    """The relative embeddings [2k, H] projected per head, then the c2p and p2c scores. The content score
    is divided by sqrt(d * score_scale), so q is scaled by 1/sqrt(score_scale) (the kernel divides by
    sqrt(d)). With relative_attention off (no position) the content score is still divided by
    sqrt(d * score_scale), as transformers divides it when pos_att_type names terms it does not compute."""
    if position is None:
      return q * jnp.asarray(1.0 / np.sqrt(score_scale(config)), q.dtype), None
    h, n, d = config.hidden_size, config.num_heads, config.head_dim
    rel = nn.Dropout(config.hidden_dropout)(position, deterministic=deterministic).astype(q.dtype)

    def project(w, b):  # [2k, H] -> [2k, len(heads), d]
      return (jnp.einsum('rh,hnd->rnd', rel, blocks.take(w, heads, 1).astype(q.dtype))
              + blocks.take(b, heads, 0).astype(q.dtype))

    own = lambda name: blocks.Weights((h, n, d), (n, d), use_bias=self.biased(config, name), name=name)()
    pos_key = project(*(key if config.share_att_key else own('pos_key'))) if 'c2p' in config.pos_att_type else None
    pos_query = (project(*(query if config.share_att_key else own('pos_query')))
                 if 'p2c' in config.pos_att_type else None)
    terms = disentangled_scores(config, q, k, pos_query, pos_key)
    return q * jnp.asarray(1.0 / np.sqrt(score_scale(config)), q.dtype), terms

  def after_layer(self, config, index, layer_input, x, attention_mask, deterministic):
    if index != 0 or not config.conv_kernel_size:
      return x
    return _conv(config, layer_input, x, attention_mask, deterministic)


FAMILY = Deberta()

# DeBERTa v1's file names for what v2 names query_proj, ... (HF_LAYER_NAMES reads v2's).
_V1_FUSED = re.compile(r'^(.*encoder\.layer\.\d+\.attention\.self\.)(in_proj\.weight|q_bias|v_bias|pos_proj\.weight|'
                       r'pos_q_proj\.(weight|bias))$')
_V2_PROJ = re.compile(r'(encoder\.layer\.\d+\.attention\.self\.)(query|key|value|pos_key|pos_query)_proj\.(weight|bias)')
_V1_NAMES = {('query', 'bias'): 'q_bias', ('value', 'bias'): 'v_bias', ('pos_key', 'weight'): 'pos_proj.weight',
             ('pos_query', 'weight'): 'pos_q_proj.weight', ('pos_query', 'bias'): 'pos_q_proj.bias'}


def split_v1(tensors: dict[str, np.ndarray], config: EncoderConfig) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """DeBERTa v1 -> v2 names: in_proj [3H, H] (per head: query, key, value rows of head_dim each) becomes
  query_proj/key_proj/value_proj; q_bias, v_bias their biases; pos_proj/pos_q_proj pos_key/pos_query.
  v1 has no key bias and no position-key bias, and its encoder has no such parameters (Deberta.biased).
  Returns the renamed tensors and, for each new name, the file's name it came from (for error messages).
  """
  out, origin = {}, {}
  n, d = config.num_heads, config.head_dim
  for name, array in tensors.items():
    match = _V1_FUSED.match(name)
    if not match:
      out[name] = array
      continue
    prefix, part = match.group(1), match.group(2)
    if part == 'in_proj.weight' and array.size == 3 * n * d * config.hidden_size:
      per_head = np.asarray(array).reshape(n, 3, d, -1)
      renamed = {f'{prefix}{proj}.weight': per_head[:, i].reshape(n * d, -1)
                 for i, proj in enumerate(('query_proj', 'key_proj', 'value_proj'))}
    else:  # renamed as is (a mis-shaped in_proj stays under its own name and is reported as unexpected)
      renamed = {prefix + {'q_bias': 'query_proj.bias', 'v_bias': 'value_proj.bias', 'in_proj.weight': part,
                           'pos_proj.weight': 'pos_key_proj.weight'}.get(
          part, part.replace('pos_q_proj', 'pos_query_proj')): array}
    out.update(renamed)
    origin.update(dict.fromkeys(renamed, name))
  return out, origin


def fuse_v1(tensors: dict[str, np.ndarray], config: EncoderConfig) -> dict[str, np.ndarray]:
  """v2 names -> DeBERTa v1's (without the family prefix): the inverse of split_v1. in_proj [3 n d, H] holds,
  per head, its query, key and value rows."""
  n, d = config.num_heads, config.head_dim
  out = {}
  for name, array in tensors.items():
    match = _V2_PROJ.fullmatch(name)
    if not match:
      out[name] = array
      continue
    prefix, proj, kind = match.groups()
    if (proj, kind) == ('query', 'weight'):
      qkv = [tensors[f'{prefix}{p}_proj.weight'].reshape(n, d, -1) for p in ('query', 'key', 'value')]
      out[prefix + 'in_proj.weight'] = np.stack(qkv, axis=1).reshape(3 * n * d, -1)
    elif (proj, kind) in _V1_NAMES:
      out[prefix + _V1_NAMES[proj, kind]] = array
  return out


class RelativeEmbeddings(nn.Module):
  """DeBERTa's relative position embeddings [2k, H] (and, in v2, their layer norm), shared by all layers."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, seq):
    """-> [2k, H] float32; `seq` is unused (the layers pick rows by relative distance)."""
    del seq  # every layer reads the whole table through its gather indices
    cfg = self.config
    table = self.param('embedding', blocks.init, (2 * cfg.attention_span, cfg.hidden_size))
    if cfg.norm_rel_ebd:
      table = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name='layer_norm')(table)
    return table


def _conv(config, embedded, x, mask, deterministic):
  """DeBERTa v2's convolution beside the first layer: LN(x + act(conv(embeddings))) on real tokens.

  embedded, x: [batch, seq, H] (the layer's input and output); the kernel is [width, H / groups, H].
  Runs inside the calling Layer, so its parameters are that layer's 'conv' and 'conv_layer_norm'.
  """
  h = config.hidden_size
  w, b = blocks.Weights((config.conv_kernel_size, h // config.conv_groups, h), (h,), name='conv')()
  pad = (config.conv_kernel_size - 1) // 2
  out = jax.lax.conv_general_dilated(embedded, w.astype(x.dtype), (1,), [(pad, pad)],
                                     dimension_numbers=('NWC', 'WIO', 'NWC'),
                                     feature_group_count=config.conv_groups) + b.astype(x.dtype)
  real = mask.astype(x.dtype)[..., None]
  out = nn.Dropout(config.hidden_dropout)(out * real, deterministic=deterministic)
  out = jnp.tanh(out) if config.conv_act == 'tanh' else blocks.gelu(out)
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=x.dtype, name='conv_layer_norm')(x + out) * real


def log_buckets(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """Hugging Face's make_log_bucket_position (DeBERTa v2): exact within +-bucket_size/2, logarithmic beyond,
  in float32 as torch computes it."""
  relative = np.asarray(relative, np.int64)
  sign = np.sign(relative)
  mid = bucket_size // 2
  abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
  log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid))
                    / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, relative, log_pos * sign).astype(np.int64)


def rows(config: EncoderConfig, seq: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the relative table each distance reads: (c2p, p2c), int32 [2 seq - 1], entry m for distance
  delta = m - (seq - 1).

  relative(delta) = bucket(delta) (v2's log buckets when position_buckets > 0). c2p reads row
  clip(relative(i - j) + k) for query i, key j; p2c reads clip(-relative(j - i) + k) for key j, query i.
  Both depend on the distance alone, so one row per distance serves every (i, j) pair. DeBERTa v1 slices its
  table to the sequence's span first; indexing the whole table as here is the same lookup.
  """
  rel = np.arange(-(seq - 1), seq)
  if config.position_buckets > 0:
    rel = log_buckets(rel, config.position_buckets, config.max_relative_positions
                      if config.max_relative_positions > 0 else config.max_position_embeddings)
  k = config.attention_span
  return np.clip(rel + k, 0, 2 * k - 1).astype(np.int32), np.clip(-rel + k, 0, 2 * k - 1).astype(np.int32)


def by_distance(x):
  """x [..., S, 2S - 1] indexed by (row a, distance a - b + S - 1) -> [..., S, S] indexed by (a, b).

  The Transformer-XL relative shift: reversed, flattened rows read consecutively at a stride of 2S - 2
  (element a (2S - 1) + (S - 1 - a) + b of the reversed rows is x[a, a - b + S - 1]). A reshape and a slice
  instead of a [batch, heads, S, S] gather, whose gradient (a scatter-add of that size) dominated training.
  """
  s = x.shape[-2]
  if s == 1:
    return x
  flat = jnp.flip(x, -1).reshape(x.shape[:-2] + (s * (2 * s - 1),))
  return flat[..., s - 1:s - 1 + s * (2 * s - 2)].reshape(x.shape[:-2] + (s, 2 * s - 2))[..., :s]


def disentangled_scores(config: EncoderConfig, q, k, pos_query, pos_key):
  """DeBERTa's relative score term, float32 [batch, heads, seq, seq], for the heads given.

  q, k: [batch, seq, heads, d] (unscaled); pos_query, pos_key: [2k, heads, d], the relative embeddings
  projected by the layer (None when the term is off). Each term is divided by sqrt(d * score_scale), as the
  content score is. Scores are computed per distance (2 seq - 1 table rows, gathered once per layer from
  the parameters) and shifted into place (by_distance). config.kernels picks the form: scores_per_head
  (CPU-tuned) or scores_batched (portable).
  """
  if pos_query is None and pos_key is None:
    return 0.0
  c2p_rows, p2c_rows = rows(config, q.shape[1])
  tables = (None if pos_query is None else pos_query[p2c_rows], None if pos_key is None else pos_key[c2p_rows])
  scale = 1.0 / np.sqrt(q.shape[-1] * score_scale(config))
  score = tuning.pick(config.kernels, scores_per_head, scores_batched, q, k, *tables)
  return score * scale


def scores_per_head(q, k, p2c_table, c2p_table):
  """The relative term, unscaled, one head at a time (lax.map), so that it is materialised once per head.

  q, k: [batch, seq, heads, d]; p2c_table, c2p_table: [2 seq - 1, heads, d] by distance, or None
  -> float32 [batch, heads, seq, seq]. Batched over heads, XLA fused the shift and p2c's transpose into both
  passes of the softmax (row maximum, then exponential), each reading the per-distance scores at a stride
  of ~2 seq floats. On CPU the loop makes DeBERTa-v3's forward pass ~17% faster and the term's own gradient
  ~45% (bench/RESULTS.md, bench/deberta_scores.py).
  """
  batch, seq, _, d = q.shape
  terms = {}  # name -> (q or k [heads, batch, seq, d], table rows by distance [heads, 2 seq - 1, d])
  if c2p_table is not None:  # query i, distance i - j
    terms['c2p'] = (q.transpose(2, 0, 1, 3), c2p_table.transpose(1, 0, 2))
  if p2c_table is not None:  # key j, distance j - i; then transposed to [query, key]
    terms['p2c'] = (k.transpose(2, 0, 1, 3), p2c_table.transpose(1, 0, 2))

  def one_head(head_terms):
    score = 0.0
    for name, (x, table) in head_terms.items():
      per_distance = jnp.einsum('xd,md->xm', x.reshape(batch * seq, d), table, preferred_element_type=jnp.float32)
      shifted = by_distance(per_distance.reshape(batch, seq, 2 * seq - 1))
      score = score + (shifted if name == 'c2p' else jnp.swapaxes(shifted, -1, -2))
    return score  # [batch, seq, seq]

  return jax.lax.map(one_head, terms).transpose(1, 0, 2, 3)


def scores_batched(q, k, p2c_table, c2p_table):
  """The portable form of scores_per_head: every head in one einsum per term, the same arithmetic."""
  score = 0.0
  if c2p_table is not None:
    score = score + by_distance(jnp.einsum('bind,mnd->bnim', q, c2p_table, preferred_element_type=jnp.float32))
  if p2c_table is not None:
    p2c = by_distance(jnp.einsum('bjnd,mnd->bnjm', k, p2c_table, preferred_element_type=jnp.float32))
    score = score + jnp.swapaxes(p2c, -1, -2)
  return score
