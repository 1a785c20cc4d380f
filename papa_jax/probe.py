"""PAPA's probe: a frozen, deterministic encoder in the fixed layout and a trained all-layer head.

The head (the paper's, for sequence tasks): for each of the num_layers + 1 hidden states (embeddings and
every layer) a learned weight per position, initialised to 1/L (L the layout length) and multiplied by
the attention mask with no renormalisation, gives a weighted sum over tokens; the num_layers + 1 vectors
are concatenated, then Linear((layers+1) H -> H), tanh, dropout, Linear(H -> labels).

Because the encoder is frozen and deterministic (the reference left attention dropout on; here it is
off), its hidden states are a function of the input alone: `cache_features` computes them once per set of
constant heads and the head trains on the cache. Memory: only the positions some example of the dataset
uses are kept (single sentences in the fixed layout use [0, L/2) and L-1, so about half), in float16
(hidden states are layer-normed, |h| ~ 10, so float16's 11-bit mantissa loses ~5e-4 relative, and its
range is ample), optionally in a memory-mapped .npy file. Positions no example uses contribute
w * 0 * h = 0 to the pooled sum, so dropping them is exact. MiniLM, single sentences: 7 x 33 x 384 x 2 B =
177 KB per example (a float32, full-length cache: 688 KB).

Training: AdamW, constant learning rate, no weight decay. Everything here is a pure function of
(trainable params, frozen inputs, batch, rng); frozen inputs (encoder params, constant matrices) are
arguments, never closed over (so jit does not bake them into the program) and never differentiated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

import encoder_jax

Params = dict[str, Any]
Batch = Mapping[str, np.ndarray]
# loss_fn(params, frozen, batch, rng) -> (scalar loss, metrics dict); predict_fn(params, frozen, batch) -> logits
LossFn = Callable[[Params, Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
PredictFn = Callable[[Params, Any, Batch], jax.Array]


# ----------------------------------------------------------------------------------------------- head

def init_head(rng: jax.Array, num_layers: int, hidden_size: int, length: int, num_labels: int) -> Params:
  """The probe head's parameters.

  Returns {'position_weights': [layers+1, L] (all 1/L), 'dense': {'kernel': [(layers+1) H, H], 'bias': [H]},
  'classifier': {'kernel': [H, labels], 'bias': [labels]}}. Linear kernels ~ normal(0.02), biases 0, as
  Hugging Face initialises the reference's nn.Linear layers.
  """
  k1, k2 = jax.random.split(rng)
  n = num_layers + 1
  return {
      'position_weights': jnp.full((n, length), 1.0 / length, jnp.float32),
      'dense': {'kernel': 0.02 * jax.random.normal(k1, (n * hidden_size, hidden_size), jnp.float32),
                'bias': jnp.zeros((hidden_size,), jnp.float32)},
      'classifier': {'kernel': 0.02 * jax.random.normal(k2, (hidden_size, num_labels), jnp.float32),
                     'bias': jnp.zeros((num_labels,), jnp.float32)},
  }


def pool(position_weights, hiddens, mask, positions=None):
  """The position-weighted sums of every hidden state, concatenated.

  Args:
    position_weights: [layers+1, L].
    hiddens: [batch, layers+1, P, H], the hidden states at P positions (P = L, or a cache's kept ones).
    mask: [batch, P] attention mask at those positions.
    positions: int [P], which of the L positions `hiddens` holds; None means all L.
  Returns:
    [batch, (layers+1) H]: sum_t w[l, t] m[t] h[l, t, :] for each l, concatenated over l.
  """
  w = position_weights if positions is None else jnp.take(position_weights, positions, axis=1)
  pooled = jnp.einsum('lp,bp,blph->blh', w, mask.astype(jnp.float32), hiddens.astype(jnp.float32))
  return pooled.reshape(pooled.shape[0], -1)


def head_logits(head, hiddens, mask, *, positions=None, dropout: float = 0.0, rng=None):
  """hiddens [batch, layers+1, P, H], mask [batch, P] -> logits [batch, labels]; dropout only with rng."""
  x = pool(head['position_weights'], hiddens, mask, positions)
  x = jnp.tanh(x @ head['dense']['kernel'] + head['dense']['bias'])
  if rng is not None and dropout > 0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - dropout), 0.0)
  return x @ head['classifier']['kernel'] + head['classifier']['bias']


def cross_entropy(logits, labels, example_mask):
  """Mean cross-entropy and accuracy over real examples (example_mask weights; padding rows count 0)."""
  w = example_mask.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  total = jnp.maximum(w.sum(), 1.0)
  accuracy = ((jnp.argmax(logits, -1) == labels) * w).sum() / total
  return (nll * w).sum() / total, {'loss': (nll * w).sum() / total, 'accuracy': accuracy}


# --------------------------------------------------------------------------------- encoder features

def encoder_features(enc_config: encoder_jax.EncoderConfig, enc_params, batch, constants=None, gates=None):
  """The frozen encoder's hidden states, stacked: [batch, layers+1, L, H] (embeddings first).

  Deterministic (no dropout: the reference's flaw of active attention dropout is fixed). Wrapped in
  stop_gradient so that no gradient reaches the encoder's weights even if a caller differentiates
  them; gradients still reach `gates` (the ranking run's lambdas).
  """
  enc_params = jax.lax.stop_gradient(enc_params)
  constants = None if constants is None else jax.lax.stop_gradient(constants)
  hiddens = encoder_jax.encode(enc_config, enc_params, batch['input_ids'], batch['attention_mask'],
                               batch['token_type_ids'], constants=constants, gates=gates)
  return jnp.stack(hiddens, axis=1)


@functools.lru_cache(maxsize=32)
def online_fns(enc_config: encoder_jax.EncoderConfig, dropout: float) -> tuple[LossFn, PredictFn]:
  """Loss and predict of the probe that runs the encoder every step.

  frozen = {'encoder': encoder params, 'constants': [layers, heads, L, L] or None}; batch = token dict
  with labels and example_mask. Trainable params = the head. Cached per arguments: the same functions come
  back, so the jitted steps built on them compile once.
  """
  def predict(head, frozen, batch, rng=None):
    h = encoder_features(enc_config, frozen['encoder'], batch, frozen.get('constants'))
    return head_logits(head, h, batch['attention_mask'], dropout=dropout, rng=rng)

  def loss(head, frozen, batch, rng):
    return cross_entropy(predict(head, frozen, batch, rng), batch['labels'], batch['example_mask'])

  return loss, lambda head, frozen, batch: predict(head, frozen, batch)


@functools.lru_cache(maxsize=32)
def cached_fns(dropout: float) -> tuple[LossFn, PredictFn]:
  """Loss and predict of the probe on cached features.

  frozen = {'positions': int [P]}; batch = {'hiddens': [B, layers+1, P, H] (float16 ok),
  'mask': [B, P], 'labels': [B], 'example_mask': [B]}. Cached per dropout, like online_fns.
  """
  def predict(head, frozen, batch, rng=None):
    return head_logits(head, batch['hiddens'], batch['mask'], positions=frozen['positions'], dropout=dropout,
                       rng=rng)

  def loss(head, frozen, batch, rng):
    return cross_entropy(predict(head, frozen, batch, rng), batch['labels'], batch['example_mask'])

  return loss, lambda head, frozen, batch: predict(head, frozen, batch)


# ------------------------------------------------------------------------------------ feature cache

@dataclasses.dataclass
class FeatureCache:
  """Hidden states of the frozen encoder for a whole dataset.

  Attributes:
    hiddens: [N, layers+1, P, H] float16 (an in-memory array or a read-only np.memmap).
    mask: float32 [N, P], the attention mask at the kept positions.
    labels: int32 [N].
    positions: int32 [P], the layout positions kept (those some example of the dataset uses).
  """
  hiddens: np.ndarray
  mask: np.ndarray
  labels: np.ndarray
  positions: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def nbytes(self) -> int:
    return int(self.hiddens.nbytes)

  def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False):
    """Yields {'hiddens', 'mask', 'labels', 'example_mask'}; the last batch is padded to batch_size with
    example_mask 0 rows, so one compiled shape serves every step.

    The shuffled order is pipeline.data.epoch_order's (a permutation seeded by [seed, epoch]) and rows keep
    it within a batch, so a probe trained on the cache sees the token batches of the online probe row for
    row (the same dropout masks hit the same examples) and the feature-cache modes train alike.
    """
    n = len(self)
    order = np.arange(n)
    if shuffle:
      order = np.random.default_rng([seed, epoch]).permutation(n)
    for start in range(0, n, batch_size):
      idx = order[start:start + batch_size]
      real = len(idx)
      rows = np.argsort(idx)  # read in ascending order (contiguous-ish from a memmap), then restore the order
      back = np.argsort(rows)
      pad = batch_size - real
      batch = {'hiddens': self.hiddens[idx[rows]][back], 'mask': self.mask[idx], 'labels': self.labels[idx],
               'example_mask': np.ones(real, np.float32)}
      if pad:
        batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
      yield batch


def estimate_cache_bytes(num_examples: int, num_layers: int, num_positions: int, hidden_size: int,
                         dtype=np.float16) -> int:
  """Bytes of a cache's hidden states: N x (layers+1) x P x H x itemsize."""
  return num_examples * (num_layers + 1) * num_positions * hidden_size * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=16)
def _features_fn(enc_config: encoder_jax.EncoderConfig, dtype: np.dtype):
  """Jitted (params, constants, token batch, positions) -> [B, layers+1, P, H] in dtype; one per config."""
  def features(params, consts, batch, positions):
    h = encoder_features(enc_config, params, batch, consts)
    return jnp.take(h, positions, axis=2).astype(dtype)  # shrink on device before the host copy
  return jax.jit(features)


def cache_features(enc_config: encoder_jax.EncoderConfig, enc_params, batches: Iterable[Batch], *,
                   constants=None, path: str | os.PathLike | None = None, dtype=np.float16,
                   progress: Callable[[int], None] | None = None) -> FeatureCache:
  """Runs the frozen encoder once over a dataset and keeps its hidden states.

  Args:
    enc_config: encoder config with the chosen constant heads (with_heads('constant', ...)).
    enc_params: the frozen encoder's params.
    batches: token batches (input_ids, attention_mask, token_type_ids [B, L], labels [B], example_mask [B])
      in a fixed order; they are held (as int32 ids, ~0.8 KB per example) to size the cache first.
    constants: [layers, heads, L, L] matrices for the constant heads, or None.
    path: where to put a memory-mapped .npy of the hidden states (None: in memory).
    dtype: storage dtype of the hidden states.
  Returns:
    The FeatureCache, examples in the order of `batches` with padding rows dropped.
  """
  enc_params = jax.device_put(enc_params)  # once, not a host-to-device copy of the weights per batch
  batches = [dict(b) for b in batches]
  if not batches:
    raise ValueError('No batches to cache features for.')
  real = [np.asarray(b['example_mask']) > 0 for b in batches]
  masks = np.concatenate([np.asarray(b['attention_mask'])[r] for b, r in zip(batches, real)])
  positions = np.flatnonzero(masks.any(0)).astype(np.int32)
  n, p = masks.shape[0], len(positions)
  shape = (n, enc_config.num_layers + 1, p, enc_config.hidden_size)
  if path is None:
    hiddens = np.empty(shape, dtype)
  else:
    hiddens = np.lib.format.open_memmap(os.fspath(path), mode='w+', dtype=dtype, shape=shape)

  features = _features_fn(enc_config, np.dtype(dtype))
  tokens = ('input_ids', 'attention_mask', 'token_type_ids')
  start = 0
  for b, r in zip(batches, real):
    out = np.asarray(features(enc_params, constants, {k: b[k] for k in tokens}, positions))[r]
    hiddens[start:start + len(out)] = out
    start += len(out)
    if progress is not None:
      progress(start)
  if path is not None:
    hiddens.flush()
    hiddens = np.load(os.fspath(path), mmap_mode='r', allow_pickle=False)
  labels = np.concatenate([np.asarray(b['labels'])[r] for b, r in zip(batches, real)]).astype(np.int32)
  return FeatureCache(hiddens, masks[:, positions].astype(np.float32), labels, positions)


# ----------------------------------------------------------------------------------------- training

def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """AdamW with a constant learning rate and no weight decay (the reference recipe)."""
  return optax.adamw(learning_rate, weight_decay=0.0)


@functools.lru_cache(maxsize=32)
def _train_step(loss_fn: LossFn, learning_rate: float):
  """(jitted step, optimizer), cached so that repeated fits with one loss_fn compile once."""
  optimizer = make_optimizer(learning_rate)

  def step(params, opt_state, frozen, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics
  # Donating params and optimizer state lets XLA update them in place; frozen inputs are not donated.
  return jax.jit(step, donate_argnums=(0, 1)), optimizer


def gradients(loss_fn: LossFn, params, frozen, batch, rng):
  """The gradient tree of one step (for tests and inspection): same structure as `params`."""
  return jax.grad(lambda p: loss_fn(p, frozen, batch, rng)[0])(params)


def fit(params: Params, frozen: Any, loss_fn: LossFn, epoch_batches: Callable[[int], Iterable[Batch]], *,
        learning_rate: float, num_epochs: int, seed: int = 0, max_steps: int | None = None,
        evaluate: Callable[[Params, int], dict[str, float]] | None = None,
        log: Callable[[str], None] | None = None) -> tuple[Params, list[dict[str, float]]]:
  """Trains `params` (only) with AdamW; frozen inputs pass through untouched.

  Args:
    params: trainable pytree (copied first, since the jitted step donates its buffers).
    frozen: pytree of non-trainable inputs for loss_fn.
    loss_fn: (params, frozen, batch, rng) -> (loss, metrics). Use a module-level or cached function so
      that its jitted step is compiled once.
    epoch_batches: epoch -> iterable of batches (numpy dicts).
    max_steps: stop after this many steps (None: all epochs).
    evaluate: (params, epoch) -> metrics, called after every epoch.
  Returns:
    (trained params, one history row per epoch: epoch, steps, train loss, seconds, evaluate's metrics).
  """
  step_fn, optimizer = _train_step(loss_fn, float(learning_rate))
  params = jax.tree.map(jnp.array, params)  # own copies: donation must not invalidate the caller's arrays
  frozen = jax.device_put(frozen)  # e.g. encoder weights: moved once, not on every step
  opt_state = optimizer.init(params)
  key = jax.random.key(seed)
  history, steps = [], 0
  for epoch in range(num_epochs):
    t0, losses = time.perf_counter(), []
    for batch in epoch_batches(epoch):
      params, opt_state, metrics = step_fn(params, opt_state, frozen, batch, jax.random.fold_in(key, steps))
      losses.append(metrics['loss'])
      steps += 1
      if max_steps is not None and steps >= max_steps:
        break
    row = {'epoch': epoch, 'steps': steps, 'train_loss': float(np.mean(jax.device_get(losses))) if losses else
           float('nan'), 'seconds': time.perf_counter() - t0}
    if evaluate is not None:
      row.update(evaluate(params, epoch))
    history.append(row)
    if log is not None:
      log(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()))
    if max_steps is not None and steps >= max_steps:
      break
  return params, history


@functools.lru_cache(maxsize=32)
def _jit_predict(predict_fn: PredictFn):
  return jax.jit(predict_fn)


def evaluate(params: Params, frozen: Any, predict_fn: PredictFn, batches: Iterable[Batch]) -> dict[str, Any]:
  """Accuracy and example count over batches (padding rows, example_mask 0, are not counted), and each real
  row's predicted label and confidence (max softmax), int32 / float32 [examples], in batch order."""
  predict = _jit_predict(predict_fn)
  frozen = jax.device_put(frozen)
  correct, total, preds, confs = 0.0, 0.0, [], []
  for batch in batches:
    logits = np.asarray(predict(params, frozen, batch), np.float32)
    w = np.asarray(batch['example_mask'], np.float64)
    correct += float(((logits.argmax(-1) == np.asarray(batch['labels'])) * w).sum())
    total += float(w.sum())
    preds.append(logits.argmax(-1)[w > 0].astype(np.int32))
    confs.append(np.asarray(jax.nn.softmax(logits[w > 0], axis=-1)).max(-1))
  return {'accuracy': correct / max(total, 1.0), 'num_examples': int(total),
          'predictions': np.concatenate(preds) if preds else np.zeros(0, np.int32),
          'confidence': np.concatenate(confs) if confs else np.zeros(0, np.float32)}


def time_steps(params: Params, frozen: Any, loss_fn: LossFn, batches: Iterable[Batch], *,
               learning_rate: float = 1e-3, warmup: int = 1) -> float:
  """Median seconds per training step over `batches` (the first `warmup` steps, which compile, excluded)."""
  step_fn, optimizer = _train_step(loss_fn, float(learning_rate))
  params = jax.tree.map(jnp.array, params)
  frozen = jax.device_put(frozen)
  opt_state = optimizer.init(params)
  times = []
  for i, batch in enumerate(batches):
    t0 = time.perf_counter()
    params, opt_state, metrics = step_fn(params, opt_state, frozen, batch, jax.random.key(i))
    jax.block_until_ready((params, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  if not times:
    raise ValueError(f'time_steps needs more than {warmup} batches.')
  return float(np.median(times))


# ---------------------------------------------------------------------------------------------- I/O

def save_params(path: str | os.PathLike, params: Params, **metadata: Any) -> None:
  """A params tree as a flat .npz ('dense/kernel', ...; metadata under 'meta/<name>'), no pickle."""
  flat = {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}
  flat.update({f'meta/{k}': np.asarray(v) for k, v in metadata.items()})
  path = os.fspath(path)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load_params(path: str | os.PathLike) -> tuple[Params, dict[str, Any]]:
  """Reads `save_params` output: (params tree of numpy arrays, metadata dict)."""
  with np.load(os.fspath(path), allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  meta = {k[len('meta/'):]: (v.item() if v.ndim == 0 else v) for k, v in flat.items() if k.startswith('meta/')}
  tree = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items() if not k.startswith('meta/')})
  return tree, meta
