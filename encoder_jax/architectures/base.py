"""The interface between the shared encoder and an architecture family.

The encoder (encoder_jax/model.py) is one embedding layer and one post-layer-norm block for every family;
what a family adds enters through the hooks of `Family`, and nowhere else. The hooks run inside the
Linen module that calls them (Embeddings, Layer or Encoder), so a parameter a hook creates, e.g.
`blocks.Weights(..., name='pos_key')()`, lands in that module's scope under that name.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from encoder_jax.config import EncoderConfig


class Family:
  """BERT's answers to every hook: absolute positions from 0, nothing shared between layers, no score term,
  nothing beside the layers. A family overrides what it changes.

  Its Hugging Face names (read by hf_import's name table on import and inverted by hf_export):
  HF_LAYER_NAMES maps our per-layer module -> the regex of its module path inside encoder.layer.N;
  HF_EXTRA_NAMES lists (regex on the tensor name, params path template, transform key) for what the family
  adds outside the layers; transform keys are hf_import's ('id': as stored, 'conv': torch Conv1d layout).
  """

  HF_LAYER_NAMES: dict[str, str] = {
      'query': r'attention\.self\.query', 'key': r'attention\.self\.key', 'value': r'attention\.self\.value',
      'attention_output': r'attention\.output\.dense', 'attention_layer_norm': r'attention\.output\.LayerNorm',
      'intermediate': r'intermediate\.dense', 'output': r'output\.dense', 'output_layer_norm': r'output\.LayerNorm',
  }
  HF_EXTRA_NAMES: tuple[tuple[str, str, str], ...] = ()

  def parameter_shapes(self, config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Path 'a/b/c' -> shape of each parameter the family adds to the shared encoder (its shared() module's
    under 'relative/', its score terms' and after_layer's under 'layers_N/'); hf_import.expected_shapes adds
    the shared encoder's."""
    del config  # BERT adds none
    return {}

  def biased(self, config: EncoderConfig, projection: str) -> bool:
    """Whether a layer's projection ('query', 'key', 'value', or a family's own, e.g. 'pos_key') has a bias
    parameter; without one its bias is a constant zero that training cannot move."""
    del config, projection  # BERT's projections all have one
    return True

  def from_hf_layout(self, tensors: dict[str, np.ndarray], config: EncoderConfig
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A checkpoint file's tensors -> the tensors under the names HF_LAYER_NAMES reads, and for each renamed one
    the file's name it came from (for error messages). to_hf_layout is its inverse, on names without the
    family prefix."""
    del config  # BERT's files are in the table's names
    return tensors, {}

  def to_hf_layout(self, tensors: dict[str, np.ndarray], config: EncoderConfig) -> dict[str, np.ndarray]:
    """The inverse of from_hf_layout: tensors in the table's names (no family prefix) -> the file's."""
    del config
    return tensors

  def unused_tensor(self, config: EncoderConfig, name: str) -> str | None:
    """Why a checkpoint tensor (name without the family prefix) is one transformers loads or skips without
    effect and this config's encoder never reads, or None. hf_import skips it; hf_export copies it back from
    the source checkpoint."""
    del config, name  # BERT reads every tensor it loads
    return None

  def position_ids(self, config: EncoderConfig, input_ids):
    """input_ids [batch, seq] -> position ids [batch, seq] into the position table."""
    del config  # BERT counts from 0 whatever the tokens
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

  def embedding_output(self, config: EncoderConfig, x, attention_mask):
    """The embeddings after their layer norm, x: [batch, seq, H] -> [batch, seq, H]."""
    del config, attention_mask  # BERT leaves padded positions as they are
    return x

  def shared(self, config: EncoderConfig):
    """A Linen module for the parameters all layers share (stored under model.SHARED), called once per
    forward pass as module(seq) -> `position`, the argument every layer's score_terms receives; or None."""
    del config
    return None

  def score_terms(self, config: EncoderConfig, q, k, position, heads, query, key, deterministic):
    """What the family adds to the scores of the heads that form scores: -> (q for the kernel, score term
    float32 [heads, seq, seq] or [batch, heads, seq, seq], or None).

    q, k: [batch, seq, len(heads), d]; position: what shared() computed; heads: the layer's head indices
    that have a query and a key (softmax and mixed); query, key: the layer's (kernel [H, n, d], bias [n, d])
    for every head.
    """
    del config, k, position, heads, query, key, deterministic
    return q, None

  def after_layer(self, config: EncoderConfig, index: int, layer_input, x, attention_mask, deterministic):
    """The output of layer `index`, x: [batch, seq, H], after anything the family runs beside it;
    layer_input: that layer's input [batch, seq, H] in the compute dtype."""
    del config, index, layer_input, attention_mask, deterministic
    return x


def padding_offset_positions(config: EncoderConfig, input_ids):
  """Hugging Face's create_position_ids_from_input_ids (fairseq's make_positions): real tokens count up
  from pad_token_id + 1, padding keeps pad_token_id. [batch, seq] -> [batch, seq]."""
  real = (input_ids != config.pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + config.pad_token_id
