"""A trained exit model out of this library, as Hugging Face model directories (floor 3: predictor, encoder_jax).

export(config, workdir, out) writes, for sweet / early_exit (one encoder whose layers the segments own, in
order; exits after exit_layers):
  OUT/config.json, model.safetensors  the fine-tuned encoder up to the last exit, in the tensor names of the
                                      checkpoint it was trained from (encoder_jax.hf_export), so that
                                      transformers.AutoModel.from_pretrained(OUT) and
                                      encoder_jax.load_pretrained(OUT) both load it; and its tokenizer files
  OUT/exit_heads.safetensors          per exit i: exit_{i}.pooler.dense.{weight,bias} and
                                      exit_{i}.classifier.{weight,bias}, in torch nn.Linear layout [out, in]
  OUT/exit_heads.json                 method, labels, where each exit sits (after which layer), its pooling
                                      ('cls': the first token; 'mean': the masked mean of the last hidden
                                      state), tensor names, temperatures and rule when the workdir was evaluated
For multi_model, one such directory per member, OUT/member_{i}/ (the member's own layers and its one exit),
and OUT/exit_heads.json listing the members. With constant (PAPA) heads the matrices go to
OUT/constant_attention.safetensors and exit_heads.json names the heads: transformers would run softmax
attention there, so only this library reproduces such a model.
load(out) reads a sweet / early_exit export back into (EncoderConfig, params in the training layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import encoder_jax
from drivers import predictor
from encoder_jax import hf_export
from sweet_jax import exits

HEADS_FILE, INFO_FILE, CONSTANTS_FILE = 'exit_heads.safetensors', 'exit_heads.json', 'constant_attention.safetensors'


def head_tensors(head: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
  """An exit head (exits.init_head layout, kernels [in, out]) -> torch nn.Linear tensors [out, in]."""
  t = lambda x: np.ascontiguousarray(np.asarray(x, np.float32).T)
  b = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  return {f'{prefix}.pooler.dense.weight': t(head['pooler']['kernel']),
          f'{prefix}.pooler.dense.bias': b(head['pooler']['bias']),
          f'{prefix}.classifier.weight': t(head['classifier']['kernel']),
          f'{prefix}.classifier.bias': b(head['classifier']['bias'])}


def _head_back(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
  """The inverse of head_tensors."""
  return {'pooler': {'kernel': tensors[f'{prefix}.pooler.dense.weight'].T,
                     'bias': tensors[f'{prefix}.pooler.dense.bias']},
          'classifier': {'kernel': tensors[f'{prefix}.classifier.weight'].T,
                         'bias': tensors[f'{prefix}.classifier.bias']}}


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


def _write_model(out: Path, encoder, heads, exit_layers, info: dict[str, Any], config, like) -> None:
  """One Hugging Face directory: the encoder, its exit heads and exit_heads.json."""
  from safetensors.numpy import save_file
  hf_export.save_pretrained(encoder, config, out, like=like)
  tensors = {}
  placed = []
  for i, (head, layer) in enumerate(zip(heads, exit_layers)):
    named = head_tensors(head, f'exit_{i}')
    tensors.update(named)
    placed.append({'exit': i, 'after_layer': int(layer), 'pooling': info['pooling'], 'tensors': sorted(named)})
  save_file(tensors, str(out / HEADS_FILE))
  (out / INFO_FILE).write_text(json.dumps({**info, 'exits': placed}, indent=2) + '\n')


def export(config, workdir: str, out_dir: str) -> list[Path]:
  """Writes the workdir's latest checkpoint under out_dir (see the module docstring); returns the model
  directories written (one, or one per Multi-Model member)."""
  trained = predictor.load_trained(config, workdir)
  built, params = trained.built, trained.params
  ecfg, cfg = built.exit_config, built.encoder_config
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  info = {'method': trained.method, 'exit_layers': list(ecfg.exit_layers), 'pooling': ecfg.pooling,
          'label_names': list(trained.label_names), 'text_fields': list(predictor.text_fields(config)),
          'source_checkpoint': str(config.model.checkpoint), **_evaluated(workdir),
          'note': 'The encoder has no pooler: every exit owns its own (exit_heads.safetensors), so transformers '
                  'initialises its pooler at random; use the hidden states, not pooler_output.'}
  if built.constants is not None:
    from safetensors.numpy import save_file
    save_file({'constants': np.ascontiguousarray(np.asarray(built.constants, np.float32))},
              str(out / CONSTANTS_FILE))
    info['constant_heads'] = [[l, h] for l in range(cfg.num_layers) for h, k in enumerate(cfg.kinds(l))
                              if k != 'softmax']
  like = config.model.checkpoint
  if 'segment_shared' in params:
    raise ValueError('This SWEET model keeps one copy per segment of the parameters its layers share (the '
                     f'{cfg.model_type} relative-position tables): one Hugging Face model cannot hold them; export '
                     'is supported for architectures without layer-shared parameters (BERT, RoBERTa).')
  if trained.method != 'multi_model':
    _write_model(out, params['encoder'], params['heads'], ecfg.exit_layers, info,
                 exits.depth_config(cfg, ecfg.exit_layers[-1]), like)
    return [out]
  members = []
  for i, (model, depth) in enumerate(zip(params['models'], ecfg.exit_layers)):
    member = out / f'member_{i}'
    _write_model(member, model['encoder'], [model['head']], [depth], {**info, 'member': i},
                 exits.depth_config(cfg, depth), like)
    members.append(member)
  (out / INFO_FILE).write_text(json.dumps({**info, 'members': [m.name for m in members]}, indent=2) + '\n')
  return members


def load(directory) -> tuple[encoder_jax.EncoderConfig, dict[str, Any], dict[str, Any]]:
  """A sweet / early_exit export (or one Multi-Model member) -> (encoder config, params in the training
  layout {'encoder', 'heads'}, exit_heads.json)."""
  from safetensors.numpy import load_file
  directory = Path(directory)
  config, encoder = encoder_jax.load_pretrained(directory)
  info = json.loads((directory / INFO_FILE).read_text())
  tensors = load_file(str(directory / HEADS_FILE))
  heads = tuple(_head_back(tensors, f'exit_{e["exit"]}') for e in info['exits'])
  return config, {'encoder': encoder, 'heads': heads}, info
