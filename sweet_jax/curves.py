"""Exit rules, the offline threshold sweep, and the analytic cost (layers and FLOPs) of adaptive inference.

Exit rules (one decision function, `decide`, shared by this offline sweep and the adaptive engine in
adaptive.py, so both derive the same exits from the same logits):
  'confidence'  the paper: exit when max softmax(logits / T_i) >= threshold. Threshold 0 (or anything
                <= 1/C) sends every example out at the first exit, a threshold > 1 sends all to the last.
  'entropy'     DeeBERT: exit when the entropy of softmax(logits / T_i) <= threshold (nats). A threshold
                >= log C sends all out at the first exit, a negative one sends all to the last.
  'patience'    PABEE: exit when the last k exits (this one included) predict the same class; the threshold
                is k, an integer >= 1. k = 1 exits at the first exit; k > num_exits sends all to the last.
                (PABEE's "patience t" counts agreements, so t = k - 1.) Temperatures do not matter here.
The last exit always answers, whatever the rule says.

Cost of an example that leaves at exit i:
  layers:  sweet / early_exit run exit_layers[i] layers; multi_model runs the cascade of members 0..i, each
           re-encoding from the embeddings: sum(exit_layers[:i + 1]) layers.
  FLOPs:   the same path counted in floating-point operations (see `layer_flops` for the convention).
Both are reported as a fraction of the FULL MODEL: the encoder with all layers up to the last exit,
its embeddings, and the last exit's head alone, every head softmax (the model one would deploy without
early exits or constant heads: a model with constant heads is measured against the same reference). The
layer fraction is the paper's figure, sum over examples of layers run / (N x exit_layers[-1]); it ignores
embeddings, poolers and heads. The FLOPs fraction counts everything, including the heads of every exit an
example passes and, for multi_model, each member's embeddings and layers. A multi_model cascade can cost
more than the full model (fractions > 1: 1+4+6+12 = 23 layers of BERT-base in the worst case).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from encoder_jax import EncoderConfig
from sweet_jax import exits

RULES = ('confidence', 'entropy', 'patience')
METHODS = ('sweet', 'early_exit', 'multi_model')
# FLOPs per element of every normalisation or nonlinearity: layer norm, softmax (with its scale and mask),
# GELU, tanh, the masking and renormalising of a constant head's values and context. A convention, stated
# once; a multiply-add is 2 FLOPs (every matrix product, counted exactly: layer_matmul_flops); every bias add
# and residual add is 1 FLOP per element; embedding lookups are free.
ELEMENTWISE_FLOPS = 5


# ----------------------------------------------------------------------------------------------- rules

def check_rule(rule: str) -> None:
  if rule not in RULES:
    raise ValueError(f'Unknown exit rule {rule!r}; choose from {RULES}.')


def default_thresholds(rule: str, num_labels: int, num_exits: int, points: int = 11) -> list[float]:
  """The sweep, ordered from fastest (everything exits first) to slowest.

  confidence: `points` evenly spaced from 1/num_labels to 1 (the paper); entropy: from log(num_labels)
  down to 0; patience: k = 1 .. num_exits.
  """
  check_rule(rule)
  if rule == 'confidence':
    return [float(t) for t in np.linspace(1.0 / num_labels, 1.0, points)]
  if rule == 'entropy':
    return [float(t) for t in np.linspace(np.log(num_labels), 0.0, points)]
  return [float(k) for k in range(1, num_exits + 1)]


def initial_state(batch: int) -> dict[str, jax.Array]:
  """Per-example state the rules carry from exit to exit (only patience reads it): the previous exit's
  prediction `last` int32 [batch] (-1 before the first exit) and the agreeing run length `streak` [batch]."""
  return {'last': jnp.full((batch,), -1, jnp.int32), 'streak': jnp.zeros((batch,), jnp.int32)}


def rule_id(rule: str) -> int:
  """The index of a rule in RULES: decide() takes it as a (possibly traced) integer, so one compiled
  program serves every rule."""
  check_rule(rule)
  return RULES.index(rule)


def decide(rule, logits, temperature, threshold, state, *, is_last: bool):
  """Whether each example may leave at this exit.

  Args:
    rule: index into RULES (an int or an int32 scalar, traced or not; see rule_id).
    logits: [batch, C] of this exit (raw; the temperature is applied here).
    temperature: scalar, this exit's temperature.
    threshold: scalar (see the module docstring for each rule's meaning).
    state: from initial_state, or from this function at the previous exit.
    is_last: the last exit always answers (static).
  Returns:
    (exit bool [batch], prediction int32 [batch], new state).
  """
  logits = logits.astype(jnp.float32)
  pred = jnp.argmax(logits, -1).astype(jnp.int32)
  streak = jnp.where(pred == state['last'], state['streak'] + 1, 1).astype(jnp.int32)
  threshold = jnp.asarray(threshold, jnp.float32)
  # Every rule is computed and one selected: [batch, C] work is negligible next to a segment, and the same
  # program (offline sweep and engine alike) then serves all rules.
  logp = jax.nn.log_softmax(logits / temperature, axis=-1)
  confidence = jnp.exp(jnp.max(logp, axis=-1))
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  rule = jnp.asarray(rule, jnp.int32)
  leave = jnp.where(rule == 0, confidence >= threshold,
                    jnp.where(rule == 1, entropy <= threshold, streak.astype(jnp.float32) >= threshold))
  if is_last:
    leave = jnp.ones_like(leave)
  return leave, pred, {'last': pred, 'streak': streak}


@jax.jit
def _assign_exits(logits, temperatures, threshold, rule):
  num_exits, n = logits.shape[:2]
  state = initial_state(n)
  done = jnp.zeros((n,), bool)
  exit_index = jnp.zeros((n,), jnp.int32)
  predictions = jnp.zeros((n,), jnp.int32)
  for i in range(num_exits):
    leave, pred, state = decide(rule, logits[i], temperatures[i], threshold, state, is_last=i == num_exits - 1)
    take = leave & ~done
    exit_index = jnp.where(take, i, exit_index)
    predictions = jnp.where(take, pred, predictions)
    done = done | leave
  return exit_index, predictions


def assign_exits(logits, temperatures, threshold, rule: str = 'confidence'):
  """Where every example leaves, from every exit's logits.

  Args:
    logits: [E, N, C]; temperatures: [E]; threshold: scalar; rule: one of RULES.
  Returns:
    (exit_index int32 [N], predictions int32 [N]): the first exit whose decision says leave, and that exit's
    prediction.
  """
  return _assign_exits(jnp.asarray(logits, jnp.float32), jnp.asarray(temperatures, jnp.float32),
                       jnp.float32(threshold), jnp.int32(rule_id(rule)))


# Ties: an engine computes exits in other batch shapes than the offline sweep (compacted, queued), so its
# logits can differ from the sweep's by rounding: not at all in float32 on a CPU so far, in the last bits of
# TF32 matmuls on a GPU (10 mantissa bits: 2^-11 ~ 5e-4 relative per rounding, ~1e-3 in a probability after a
# few layers), and 2^-8 ~ 4e-3 per rounding in bfloat16 (~1e-2 after a few layers). A probability within that
# of the threshold (or of its runner-up class) can then decide the other way. TIE_TOLERANCE, the probability
# (or entropy, in nats) margin within which such a difference is accepted as a tie, is ~10x (float32) and ~5x
# (bfloat16) those; eval.py's config.eval.tie_tolerance overrides it.
TIE_TOLERANCE = {'float32': 1e-2, 'bfloat16': 5e-2}


def tie_tolerance(dtype) -> float:
  """The default TIE_TOLERANCE of an encoder compute dtype (float32 for any other)."""
  return TIE_TOLERANCE.get(str(jnp.dtype(dtype)), TIE_TOLERANCE['float32'])


def borderline(logits, temperatures, threshold, rule: str, tolerance: float) -> np.ndarray:
  """Where a decision or a prediction sits within `tolerance` of going the other way: bool [E, N].

  Exit j of example n is borderline when its calibrated score (confidence for 'confidence', entropy for
  'entropy') lies within tolerance of the threshold, or its top two calibrated probabilities lie within
  tolerance of each other (the prediction, and with it patience's streak, may flip). logits: [E, N, C];
  temperatures: [E].
  """
  check_rule(rule)
  z = np.asarray(logits, np.float64) / np.asarray(temperatures, np.float64).reshape(-1, 1, 1)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  top2 = np.sort(p, -1)[..., -2:] if p.shape[-1] > 1 else np.concatenate([np.zeros_like(p), p], -1)
  near = top2[..., 1] - top2[..., 0] <= tolerance
  if rule == 'confidence':
    near |= np.abs(top2[..., 1] - threshold) <= tolerance
  elif rule == 'entropy':
    near |= np.abs(-(p * np.log(np.maximum(p, 1e-300))).sum(-1) - threshold) <= tolerance
  return near


def ties(borderline_: np.ndarray, exit_a, exit_b) -> np.ndarray:
  """Whether each example's difference between two runs (exits exit_a, exit_b [N]) can be a tie: bool [N], True
  where some exit up to the later of the two is borderline (a decision there may have gone either way)."""
  later = np.maximum(np.asarray(exit_a), np.asarray(exit_b))
  upto = np.arange(borderline_.shape[0])[:, None] <= later[None]
  return np.any(borderline_ & upto, axis=0)


# ----------------------------------------------------------------------------------------------- costs

def _dense(rows: int, fan_in: int, fan_out: int) -> int:
  """x [rows, fan_in] @ W [fan_in, fan_out] + b."""
  return 2 * rows * fan_in * fan_out + rows * fan_out


def embedding_flops(config: EncoderConfig, seq: int) -> int:
  """Lookups are free; adding the word, position and type vectors (2 per element) and the layer norm."""
  return 2 * seq * config.hidden_size + ELEMENTWISE_FLOPS * seq * config.hidden_size


def layer_flops(config: EncoderConfig, layer: int, seq: int) -> int:
  """One transformer layer on one example of `seq` tokens (padding included: it is computed): its matrix
  products (layer_matmul_flops) and everything elementwise (layer_elementwise_flops)."""
  return layer_matmul_flops(config, layer, seq) + layer_elementwise_flops(config, layer, seq)


def _head_counts(config: EncoderConfig, layer: int) -> tuple[int, int, int]:
  """(heads that form queries, keys and scores; heads that apply a constant matrix; mixed heads): a mixed
  head (PAPA's gated ranking run) does both."""
  kinds = config.kinds(layer)
  n_mixed = kinds.count('mixed')
  return kinds.count('softmax') + n_mixed, kinds.count('constant') + n_mixed, n_mixed


def layer_matmul_flops(config: EncoderConfig, layer: int, seq: int) -> int:
  """The matrix products of one layer on one example, 2 FLOPs per multiply-add: exactly the dot_generals of
  the encoder's inference forward (tests/test_sweet_papa.py counts them in its jaxpr).

  One fused projection makes the queries and keys of the heads that form scores and the values of every
  head: a constant head's query and key columns are never computed. Score-forming heads: Q K^T and
  probabilities @ values. Constant heads: their [L, L] matrix @ masked values, and @ the mask (each row's
  mass over the example's real keys, the renormaliser). Then the output projection and the feed-forward
  block. Architectures whose scores add matrix products of their own (DeBERTa's disentangled terms) are
  counted as BERT.
  """
  h, d, n, i, L = config.hidden_size, config.head_dim, config.num_heads, config.intermediate_size, seq
  n_qk, n_const, _ = _head_counts(config, layer)
  flops = 2 * L * h * (2 * n_qk + n) * d  # the fused Q, K, V projection
  flops += n_qk * 2 * (2 * L * L * d)  # scores, and probabilities @ values
  flops += n_const * (2 * L * L * d + 2 * L * L)  # constant matrix @ masked values, and @ the mask
  return flops + 2 * L * n * d * h + 2 * 2 * L * h * i  # output projection; feed-forward block


def layer_elementwise_flops(config: EncoderConfig, layer: int, seq: int) -> int:
  """Everything else in one layer on one example: bias adds, the softmax of each score-forming head (over its
  [L, L] scores), each constant head's masking and renormalising of its [L, d] values and context (no
  [L, L] work: the matrix is shared by the batch), the gated mix of a mixed head's two contexts (3 per
  element), residuals, layer norms and GELU."""
  h, d, n, i, e, L = (config.hidden_size, config.head_dim, config.num_heads, config.intermediate_size,
                      ELEMENTWISE_FLOPS, seq)
  n_qk, n_const, n_mixed = _head_counts(config, layer)
  flops = L * (2 * n_qk + n) * d  # projection biases
  flops += n_qk * e * L * L + n_const * e * L * d + n_mixed * 3 * L * d
  flops += L * h + L * h + e * L * h  # output projection's bias, residual, layer norm
  return flops + L * i + e * L * i + L * h + L * h + e * L * h  # feed-forward biases, GELU, residual, norm


def head_flops(config: EncoderConfig, exit_config: exits.ExitConfig, seq: int) -> int:
  """One exit on one example: pooling ([CLS]: free; mean: mask-multiply and sum 2 per element, and a
  divide per feature), pooler dense + tanh, classifier."""
  h = config.hidden_size
  pooling = 0 if exit_config.pooling == 'cls' else 2 * seq * h + h
  return pooling + _dense(1, h, h) + ELEMENTWISE_FLOPS * h + _dense(1, h, exit_config.num_labels)


def exit_costs(config: EncoderConfig, exit_config: exits.ExitConfig, method: str, seq: int) -> np.ndarray:
  """FLOPs spent on one example of `seq` tokens that leaves at exit i, for every i: float64 [E].

  sweet / early_exit: embeddings, the layers below exit i, and the heads of exits 0..i.
  multi_model: members 0..i each in full (embeddings, its layers, its head): the cascade re-encodes.
  """
  _check_method(method)
  layers = np.cumsum([0] + [layer_flops(config, l, seq) for l in range(exit_config.exit_layers[-1])])
  emb, head = embedding_flops(config, seq), head_flops(config, exit_config, seq)
  per_exit = np.array([emb + layers[k] + head for k in exit_config.exit_layers], np.float64)
  if method == 'multi_model':
    return np.cumsum(per_exit)  # member j alone costs per_exit[j]
  return emb + layers[list(exit_config.exit_layers)] + head * np.arange(1, exit_config.num_exits + 1)


def full_model_flops(config: EncoderConfig, exit_config: exits.ExitConfig, seq: int) -> float:
  """The full model on one example: embeddings, layers up to the last exit, the last exit's head only, every
  head softmax: the reference is the model deployed with neither early exits nor constant heads, so that the
  fractions of a model with constant heads and of one without share a denominator (and the constant heads'
  saving shows in the fraction)."""
  config = config.replace(head_kinds=None)
  layers = sum(layer_flops(config, l, seq) for l in range(exit_config.exit_layers[-1]))
  return float(embedding_flops(config, seq) + layers + head_flops(config, exit_config, seq))


def layers_run(exit_config: exits.ExitConfig, method: str) -> np.ndarray:
  """Transformer layers run by an example leaving at exit i: int [E] (multi_model: cumulative depths)."""
  _check_method(method)
  depths = np.asarray(exit_config.exit_layers, np.int64)
  return np.cumsum(depths) if method == 'multi_model' else depths


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; choose from {METHODS}.')


def cost_fractions(exit_index, *, encoder_config: EncoderConfig, exit_config: exits.ExitConfig, method: str,
                   seq_lengths) -> tuple[float, float]:
  """(layer_fraction, flops_fraction) of examples leaving at `exit_index` [N] relative to the full model.

  seq_lengths: int, or int [N]: the length each example is computed at (the padded length of its batch,
  what the hardware runs; pass attention-mask sums instead to count real tokens only).
  """
  exit_index = np.asarray(exit_index, np.int64)
  n = exit_index.shape[0]
  if n == 0:
    raise ValueError('No examples.')
  layer_fraction = float(layers_run(exit_config, method)[exit_index].sum() / (n * exit_config.exit_layers[-1]))
  seqs = np.broadcast_to(np.asarray(seq_lengths, np.int64), (n,))
  spent = full = 0.0
  for seq in np.unique(seqs):  # few distinct lengths: cost tables per length
    rows = seqs == seq
    spent += exit_costs(encoder_config, exit_config, method, int(seq))[exit_index[rows]].sum()
    full += rows.sum() * full_model_flops(encoder_config, exit_config, int(seq))
  return layer_fraction, float(spent / full)


# ----------------------------------------------------------------------------------------------- sweep

@dataclasses.dataclass
class Point:
  """One threshold of the sweep. predictions, exit_index: int32 [N]; exit_counts: examples per exit [E]."""
  threshold: float
  accuracy: float
  layer_fraction: float
  flops_fraction: float
  exit_counts: list[int]
  predictions: np.ndarray
  exit_index: np.ndarray

  def summary(self) -> dict[str, Any]:
    """JSON-able, without the per-example arrays."""
    return {'threshold': self.threshold, 'accuracy': self.accuracy, 'layer_fraction': self.layer_fraction,
            'flops_fraction': self.flops_fraction, 'exit_counts': list(self.exit_counts)}


def sweep(logits, labels, *, temperatures, encoder_config: EncoderConfig, exit_config: exits.ExitConfig,
          method: str, seq_lengths, thresholds: Sequence[float] | None = None,
          rule: str = 'confidence') -> list[Point]:
  """The speed-accuracy curve from every exit's logits, thresholds applied offline.

  Args:
    logits: [E, N, C] every exit's logits on the scored examples.
    labels: int [N].
    temperatures: [E] (from calibration.fit_temperatures on held-out data; ones for none).
    seq_lengths: int or int [N], see cost_fractions.
    thresholds: None for default_thresholds(rule, ...), or a list.
    rule: one of RULES.
  Returns:
    one Point per threshold, in the given order.
  """
  check_rule(rule)
  _check_method(method)
  logits = jnp.asarray(logits, jnp.float32)
  num_exits, n, num_labels = logits.shape
  if num_exits != exit_config.num_exits:
    raise ValueError(f'logits have {num_exits} exits; the exit config has {exit_config.num_exits}.')
  labels = np.asarray(labels)
  temperatures = jnp.asarray(temperatures, jnp.float32).reshape(num_exits)
  if thresholds is None or len(thresholds) == 0:
    thresholds = default_thresholds(rule, num_labels, num_exits)
  points = []
  for threshold in thresholds:
    exit_index, predictions = jax.device_get(assign_exits(logits, temperatures, float(threshold), rule=rule))
    layer_fraction, flops_fraction = cost_fractions(
        exit_index, encoder_config=encoder_config, exit_config=exit_config, method=method, seq_lengths=seq_lengths)
    points.append(Point(
        threshold=float(threshold), accuracy=float((predictions == labels).mean()),
        layer_fraction=layer_fraction, flops_fraction=flops_fraction,
        exit_counts=np.bincount(exit_index, minlength=num_exits).tolist(),
        predictions=predictions, exit_index=exit_index))
  return points
