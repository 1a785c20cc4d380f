"""The registry (floor 3): a method name -> its Method (init, loss, predict) and what eval needs.

train.py and eval.py pick a builder by `config.method` (as big_vision picks a model by name); the
pipeline only ever sees the Method. PAPA runs its own staged experiment (papa_experiment.py).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any, Callable

import numpy as np

import encoder_jax
import encoder_jax.hf_import
from encoder_jax.tokenization import DEFAULT_BUCKETS
from pipeline import data, fingerprint, validation
from pipeline.train_loop import Method
from sweet_jax import exits, objectives

EXIT_METHODS = objectives.METHODS  # 'sweet', 'early_exit', 'multi_model'
STAGED_METHODS = ('papa',)


@dataclasses.dataclass(frozen=True)
class Built:
  """A method and the pieces that describe its model."""
  method: Method
  encoder_config: encoder_jax.EncoderConfig
  exit_config: exits.ExitConfig
  encode_fn: Callable[..., dict[str, np.ndarray]]
  constants: Any = None
  # The constants' record for the run identity (pipeline.fingerprint.of_model); None without constants.
  constants_record: dict[str, Any] | None = None


def constant_heads_of(spec, encoder_config, exit_config) -> list[tuple[int, int]] | str:
  """config.model.constant_heads -> (layer, head) pairs: '' (none), 'all', 'first_segment' (every head
  of the layers below the first exit), or a sequence of (layer, head) pairs (0-indexed; also as its text,
  '((0, 3), (0, 5))', which is how a command-line override of this string field arrives)."""
  if not spec:
    return []
  if spec == 'all':
    return 'all'
  if spec == 'first_segment':
    return [(l, h) for l in range(exit_config.exit_layers[0]) for h in range(encoder_config.num_heads)]
  if isinstance(spec, str) and spec.startswith('('):  # pairs given on the command line arrive as text
    spec = ast.literal_eval(spec)
  if isinstance(spec, str):
    raise ValueError(f"model.constant_heads must be '', 'all', 'first_segment' or (layer, head) pairs, got {spec!r}.")
  return [tuple(int(x) for x in pair) for pair in spec]


def _load_constants(path: str, encoder_config, checkpoint: str) -> tuple[np.ndarray, dict[str, Any]]:
  """PAPA averages [layers, heads, L, L] from an npz written by papa_jax.averages (no pickle), checked against
  the encoder they will run in, and their record for the run identity: the file's content (sha256, bytes;
  the path for information), the model they were estimated for, and their shape."""
  if not path:
    raise ValueError('model.constant_heads is set, so model.constants_path must name a PAPA averages .npz '
                     '(python train.py --config configs/papa_demo.py writes one to WORKDIR/papa/averages.npz).')
  from papa_jax import averages
  est = averages.load(path)
  averages.check_fits(est, encoder_config, checkpoint, where=f'model.constants_path {path}')
  record = {**fingerprint.file_identity(path), 'model': est.model, 'encoder': est.encoder,
            'shape': list(est.sums.shape)}
  return est.averages, record


def layout_length(model_config, constants) -> int | None:
  """The length of PAPA's fixed layout the inputs take, or None (plain tokenization): the constants' L when
  there are constants; else model.layout_length when set (0: none), so that a model without constant heads
  reads exactly the tokens its constant-head variants read (experiments/sweet_papa_study.py's 'none')."""
  asked = int(model_config.get('layout_length', 0)) or None
  if constants is None:
    return asked
  if asked is not None and asked != constants.shape[-1]:
    raise ValueError(f'model.layout_length is {asked}, but the constants in model.constants_path are '
                     f'{constants.shape[-1]} x {constants.shape[-1]}: set it to {constants.shape[-1]} or 0.')
  return constants.shape[-1]


def check_model_fields(config) -> None:
  """Refuses, before any data is loaded, data.max_seq_length above the model's position table or below what
  its tokenizer's special tokens need (pairs: RoBERTa and MPNet put 4 around two texts, BERT 3), naming the
  field (pipeline.validation.ConfigError). Reads only config.json and the tokenizer."""
  if config.method not in EXIT_METHODS:
    return
  checkpoint, length = config.model.checkpoint, config.data.max_seq_length
  with open(encoder_jax.hf_import.resolve(checkpoint) / 'config.json') as f:
    encoder_config = encoder_jax.EncoderConfig.from_hf(json.load(f))
  if length > encoder_config.max_length:
    raise validation.ConfigError(f'data.max_seq_length {length} exceeds the position table of {checkpoint} '
                                 f'({encoder_config.max_length} tokens); set it to at most that.')
  pair = len(data.text_fields(config.data)) == 2
  need = encoder_jax.load_tokenizer(checkpoint).num_special_tokens_to_add(pair=pair) + (2 if pair else 1)
  if length < need:
    raise validation.ConfigError(
        f'data.max_seq_length must be a whole number >= {need} (the {checkpoint} tokenizer adds '
        f'{need - (2 if pair else 1)} special tokens around {"a pair" if pair else "a text"}, plus one token of '
        f'each text), got {length}.')


def build(config, num_labels: int) -> Built:
  """The Method named by config.method for a task with num_labels classes."""
  name = config.method
  if name not in EXIT_METHODS:
    raise ValueError(f'Unknown method {name!r}; choose from {EXIT_METHODS + STAGED_METHODS}.')
  m = config.model
  encoder_config, pretrained = encoder_jax.load_pretrained(m.checkpoint, dtype=config.train.get('dtype', 'float32'),
                                                          kernels=m.get('kernels', 'auto'))
  exit_config = exits.ExitConfig(tuple(m.exit_layers), num_labels, m.pooling, m.classifier_dropout)
  exit_config.check(encoder_config)
  constants = constants_record = None
  heads = constant_heads_of(m.get('constant_heads', ''), encoder_config, exit_config)
  if heads:
    constants, constants_record = _load_constants(m.get('constants_path', ''), encoder_config, m.checkpoint)
    encoder_config = encoder_config.with_heads('constant', heads)
  init, loss, predict = objectives.make_fns(
      name, encoder_config, exit_config, pretrained, weighting=config.train.exit_weighting,
      geometric_ratio=config.train.get('geometric_ratio', 2.0), constants=constants)
  tokenizer = encoder_jax.load_tokenizer(m.checkpoint)
  # Constant matrices are position-specific: inputs take PAPA's fixed layout at their length. The encode
  # function checks token types against the model's type vocabulary.
  encode_fn = encoder_jax.make_encode_fn(tokenizer, encoder_config, max_length=config.data.max_seq_length,
                                         layout_length=layout_length(m, constants),
                                         buckets=tuple(config.data.get('length_buckets', DEFAULT_BUCKETS)))
  method = Method(name, init, loss, predict, param_groups=objectives.param_groups(name, exit_config))
  return Built(method, encoder_config, exit_config, encode_fn, constants, constants_record)
