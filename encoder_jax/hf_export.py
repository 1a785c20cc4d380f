"""params -> a Hugging Face checkpoint directory: the inverse of hf_import, through hf_import's own name table.

The directory is what transformers' `AutoModelForSequenceClassification.from_pretrained(out)` loads with nothing
missing, unexpected or mismatched: the encoder under the family's base-model prefix ('bert.', 'deberta.', ...),
in the tensor names and shapes of the checkpoint it was fine-tuned from (`like`), and a classification head in
the family's own names (SEQUENCE_CLASSIFICATION); `encoder_jax.load_pretrained(out)` loads it back. No second name
table: every tensor of `like` is mapped to its params path by hf_import.name_table, and the table's transform (a
transpose and reshape) is inverted by pushing an index array through it; a family's own file layout (DeBERTa v1's fused
query/key/value) is restored by its Family.to_hf_layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from encoder_jax import architectures, hf_import
from encoder_jax.config import DEBERTA_TYPES, EncoderConfig

# Tokenizer files copied beside the weights, so AutoTokenizer.from_pretrained(out) works too.
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt', 'vocab.json',
                   'merges.txt', 'spm.model')
# model_type -> (base-model prefix, the head's dense (followed by tanh), its classifier, architecture), as in
# transformers' *ForSequenceClassification. RoBERTa and MPNet hold no base pooler there (it would be unexpected).
SEQUENCE_CLASSIFICATION = {
    'bert': ('bert', 'bert.pooler.dense', 'classifier', 'BertForSequenceClassification'),
    'roberta': ('roberta', 'classifier.dense', 'classifier.out_proj', 'RobertaForSequenceClassification'),
    'mpnet': ('mpnet', 'classifier.dense', 'classifier.out_proj', 'MPNetForSequenceClassification'),
    'deberta': ('deberta', 'pooler.dense', 'classifier', 'DebertaForSequenceClassification'),
    'deberta-v2': ('deberta', 'pooler.dense', 'classifier', 'DebertaV2ForSequenceClassification'),
}


def invert(transform, value: np.ndarray, hf_shape: tuple[int, ...], config: EncoderConfig) -> np.ndarray:
  """The tensor t of shape hf_shape with transform(t, config) == value.

  The table's transforms only move elements (transpose, reshape), so transform applied to the flat index
  of every element says where each element went; scattering value back through it undoes the move.
  """
  where = np.asarray(transform(np.arange(int(np.prod(hf_shape))).reshape(hf_shape), config))
  if where.shape != value.shape:
    raise ValueError(f'a tensor of shape {hf_shape} maps to {where.shape}, but the params hold {value.shape}.')
  out = np.empty(where.size, np.float32)
  out[where.reshape(-1)] = np.asarray(value, np.float32).reshape(-1)
  return out.reshape(hf_shape)


def _leaf(params: dict[str, Any], path: str):
  node = params
  for key in path.split('/'):
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return node


def to_hf_tensors(params: dict[str, Any], config: EncoderConfig, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Encoder params -> the encoder's tensors in transformers' *ForSequenceClassification names: `like`'s tensors
  (a state dict read by hf_import.read_tensors), under the family's base-model prefix, LayerNorm.weight/.bias.

  Tensors of `like` that params do not hold are left out: ignored ones (hf_import.IGNORED_TENSORS), layers beyond
  config.num_layers, and the pooler (the classification head writes its own); tensors this config never reads
  (Family.unused_tensor) are copied as they are. Every params leaf must be written (an error lists any that are not).
  """
  fam = architectures.family(config)
  like, _ = fam.from_hf_layout(like, config)
  canonical, used, expected = {}, set(), hf_import.expected_shapes(config)
  for raw, tensor in like.items():
    name = hf_import.canonical(raw)
    if fam.unused_tensor(config, name):
      canonical[name] = np.asarray(tensor)
      continue
    path, transform = hf_import.map_name(name, config.model_type)
    value = _leaf(params, path) if path in expected else None  # not the pooler, nor layers past num_layers
    if value is None:
      continue
    canonical[name] = invert(transform, np.asarray(value), tuple(tensor.shape), config)
    used.add(path)
  missing = sorted(set(expected) - used)
  if missing:
    raise ValueError(f'{len(missing)} parameter(s) have no tensor in the reference checkpoint: {missing[:5]}.')
  canonical = fam.to_hf_layout(canonical, config)
  prefix = SEQUENCE_CLASSIFICATION[config.model_type][0]
  return {f'{prefix}.{name}': value for name, value in canonical.items()}


def head_tensors(head: dict[str, Any], model_type: str) -> dict[str, np.ndarray]:
  """A classification head {'pooler': {kernel [H, H], bias}, 'classifier': {kernel [H, C], bias}} (dense, tanh,
  classifier) -> the family's *ForSequenceClassification tensors (nn.Linear layout [out, in])."""
  _, dense, classifier, _ = SEQUENCE_CLASSIFICATION[model_type]
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  return {f'{dense}.weight': f32(np.asarray(head['pooler']['kernel']).T), f'{dense}.bias': f32(head['pooler']['bias']),
          f'{classifier}.weight': f32(np.asarray(head['classifier']['kernel']).T),
          f'{classifier}.bias': f32(head['classifier']['bias'])}


def head_from_tensors(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, Any]:
  """The inverse of head_tensors: a *ForSequenceClassification file's head (dense [H, H], classifier [C, H])."""
  _, dense, classifier, _ = SEQUENCE_CLASSIFICATION[model_type]
  return {'pooler': {'kernel': np.asarray(tensors[f'{dense}.weight'], np.float32).T,
                     'bias': np.asarray(tensors[f'{dense}.bias'], np.float32)},
          'classifier': {'kernel': np.asarray(tensors[f'{classifier}.weight'], np.float32).T,
                         'bias': np.asarray(tensors[f'{classifier}.bias'], np.float32)}}


def classifier_config(hf_config: dict[str, Any], config: EncoderConfig, labels) -> dict[str, Any]:
  """The source's config.json for a *ForSequenceClassification of config.num_layers layers and these labels
  (num_labels, id2label, label2id); DeBERTa's pooler activation is the exits' tanh."""
  out = {k: v for k, v in hf_config.items() if k not in ('id2label', 'label2id', 'num_labels', 'architectures')}
  out.update(num_hidden_layers=config.num_layers, architectures=[SEQUENCE_CLASSIFICATION[config.model_type][3]],
             num_labels=len(labels), id2label={str(i): str(name) for i, name in enumerate(labels)},
             label2id={str(name): i for i, name in enumerate(labels)})
  if config.model_type in DEBERTA_TYPES:
    out.update(pooler_hidden_act='tanh', pooler_hidden_size=config.hidden_size, pooler_dropout=0.0)
  return out


def save_pretrained(params: dict[str, Any], config: EncoderConfig, out_dir, *, like, head: dict[str, Any],
                    labels) -> Path:
  """Writes out_dir/config.json, model.safetensors and the tokenizer files of a *ForSequenceClassification
  with config.num_layers layers of the encoder `params` and the classification `head` (head_tensors), in the
  architecture and names of checkpoint `like` (a directory, hub id or packaged name). Returns out_dir."""
  from safetensors.numpy import save_file
  source = hf_import.resolve(like)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors = {**to_hf_tensors(params, config, hf_import.read_tensors(source)), **head_tensors(head, config.model_type)}
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / 'model.safetensors'),
            metadata={'format': 'pt'})  # transformers reads only files marked as torch-format
  hf_config = classifier_config(json.loads((source / 'config.json').read_text()), config, labels)
  (out / 'config.json').write_text(json.dumps(hf_config, indent=2) + '\n')
  for name in TOKENIZER_FILES:
    if (source / name).exists():
      shutil.copy(source / name, out / name)
  return out
