"""A trained exit model out of this library, as a transformers classifier (floor 3: predictor, encoder_jax).

export(config, workdir, out, exit_layer=None) writes:
  OUT/config.json, model.safetensors  a *ForSequenceClassification of the chosen exit: the fine-tuned encoder up
                                      to that exit's layer (a truncated model; default the last exit) and its head,
                                      in transformers' own names (encoder_jax.hf_export), with num_labels, id2label
                                      and label2id from the training labels; and the tokenizer files. For
                                      multi_model, the chosen member. transformers'
                                      AutoModelForSequenceClassification.from_pretrained(OUT) loads it with nothing
                                      missing; its logits are the exit's where the exit pools [CLS] with softmax
                                      attention (EXACT); see exits.json's 'transformers_head'.
  OUT/exits.safetensors               every exit, all of the trained parameters in this library's layout (flat
                                      'encoder/layers_0/query/kernel', 'heads/2/classifier/bias', ...; Multi-Model
                                      'models/1/head/...'): load(OUT) reads them back.
  OUT/exits.json                      method, labels, exit layers, pooling, which exit the transformers head is and
                                      whether it reproduces it, temperatures and rule when the workdir was evaluated
  OUT/member_{i}/                     multi_model: every member as its own classifier directory
  OUT/constant_attention.safetensors  constant (PAPA) heads' matrices; transformers runs softmax attention there
A SWEET model of a family whose layers share parameters (MPNet's relative bias, DeBERTa's relative table) holds
one copy per segment, which one transformers model cannot; it is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import encoder_jax
from drivers import predictor
from encoder_jax import hf_export, hf_import
from sweet_jax import exits

SIDE_FILE, INFO_FILE, CONSTANTS_FILE = 'exits.safetensors', 'exits.json', 'constant_attention.safetensors'


def _flatten(tree, prefix: str = '') -> dict[str, np.ndarray]:
  """Nested dicts and tuples -> {'a/0/b': array}."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (tuple, list)):
    items = enumerate(tree)
  else:
    return {prefix: np.ascontiguousarray(np.asarray(tree, np.float32))}
  out = {}
  for key, value in items:
    out.update(_flatten(value, f'{prefix}/{key}' if prefix else str(key)))
  return out


def _unflatten(flat: dict[str, np.ndarray]):
  """The inverse of _flatten: levels whose keys are 0..n-1 become tuples."""
  def tuples(node):
    if not isinstance(node, dict):
      return node
    if node and sorted(node) == sorted(str(i) for i in range(len(node))):
      return tuple(tuples(node[str(i)]) for i in range(len(node)))
    return {k: tuples(v) for k, v in node.items()}
  return tuples(hf_import.nest(flat))


def _evaluated(workdir: str) -> dict[str, Any]:
  """Temperatures and rule of an evaluated workdir (empty when never evaluated)."""
  out = {}
  for name, keys in (('temperatures.json', ('temperatures', 'calibrated')), ('curve.json', ('rule',))):
    path = os.path.join(workdir, 'eval', name)
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      out.update({k: saved[k] for k in keys if k in saved})
  return out


def transformers_head(head: dict[str, Any], pooling: str, pretrained_pooler) -> dict[str, Any]:
  """The exit head as transformers' head runs it: dense + tanh on the first token, classifier. A [CLS] exit maps
  onto it exactly. A mean-pooling exit has no transformers head: the dense is then the pretrained pooler (when
  the checkpoint has one), so that transformers' first-token head is the pretrained one under the exit's classifier."""
  if pooling == 'cls' or pretrained_pooler is None:
    return head
  return {**head, 'pooler': pretrained_pooler}


def _member_and_head(trained, index: int):
  params = trained.params
  if trained.method == 'multi_model':
    return params['models'][index]['encoder'], params['models'][index]['head']
  return params['encoder'], params['heads'][index]


def export(config, workdir: str, out_dir: str, exit_layer: int | None = None) -> list[Path]:
  """Writes the workdir's latest checkpoint under out_dir (see the module docstring), the transformers model
  for the exit after layer `exit_layer` (default: the last exit). Returns the classifier directories written."""
  trained = predictor.load_trained(config, workdir)
  built, params = trained.built, trained.params
  ecfg, cfg = built.exit_config, built.encoder_config
  layer = int(exit_layer or ecfg.exit_layers[-1])
  if layer not in ecfg.exit_layers:
    raise ValueError(f'--exit {layer}: the exits sit after layers {list(ecfg.exit_layers)}; pick one of them.')
  if 'segment_shared' in params:
    raise ValueError('This SWEET model keeps one copy per segment of the parameters its layers share (the '
                     f'{cfg.model_type} relative-position tables): one transformers model cannot hold them; SWEET '
                     'export is supported for BERT and RoBERTa (early_exit and multi_model export every family).')
  like = config.model.checkpoint
  pretrained_pooler = encoder_jax.load_pretrained(like)[1].get('pooler') if ecfg.pooling != 'cls' else None
  labels = list(trained.label_names)
  exact = ecfg.pooling == 'cls' and built.constants is None
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)

  def write(directory: Path, index: int) -> Path:
    encoder, head = _member_and_head(trained, index)
    depth = exits.depth_config(cfg, ecfg.exit_layers[index])
    return hf_export.save_pretrained(encoder, depth, directory, like=like, labels=labels,
                                     head=transformers_head(head, ecfg.pooling, pretrained_pooler))

  written = [write(out, ecfg.exit_layers.index(layer))]
  if trained.method == 'multi_model':
    written += [write(out / f'member_{i}', i) for i in range(len(ecfg.exit_layers))]
  from safetensors.numpy import save_file
  save_file(_flatten(params), str(out / SIDE_FILE))
  info = {'method': trained.method, 'exit_layers': list(ecfg.exit_layers), 'pooling': ecfg.pooling,
          'label_names': labels, 'text_fields': list(predictor.text_fields(config)),
          'source_checkpoint': str(like), **_evaluated(workdir),
          **trained.record,  # the checkpoint step, run identity and code this export holds
          'transformers_head': {
              'exit_layer': layer, 'exact': exact,
              'note': ('transformers computes this exit\'s logits.' if exact else
                       'transformers does not compute this exit\'s logits: '
                       + ('it pools the first token, the exit the masked mean (the head holds the pretrained '
                          'pooler, where the checkpoint has one, and the exit\'s classifier). '
                          if ecfg.pooling != 'cls' else '')
                       + ('it runs softmax where this model has constant heads. ' if built.constants is not None
                          else '')
                       + 'exporter.load(OUT) gives every exit as trained.')}}
  if trained.method == 'multi_model':
    info['members'] = [p.name for p in written[1:]]
  if built.constants is not None:
    save_file({'constants': np.ascontiguousarray(np.asarray(built.constants, np.float32))},
              str(out / CONSTANTS_FILE))
    info['constant_heads'] = [[l, h] for l in range(cfg.num_layers) for h, k in enumerate(cfg.kinds(l))
                              if k != 'softmax']
  (out / INFO_FILE).write_text(json.dumps(info, indent=2) + '\n')
  return written


def load(directory) -> tuple[encoder_jax.EncoderConfig, dict[str, Any], dict[str, Any]]:
  """An export -> (encoder config with the layers up to the last exit, every trained parameter in the method's
  layout ({'encoder', 'heads'}, or {'models'} for multi_model), exits.json)."""
  from safetensors.numpy import load_file
  directory = Path(directory)
  info = json.loads((directory / INFO_FILE).read_text())
  config = encoder_jax.EncoderConfig.from_json_file(directory / 'config.json', num_layers=info['exit_layers'][-1])
  return config, _unflatten(load_file(str(directory / SIDE_FILE))), info
