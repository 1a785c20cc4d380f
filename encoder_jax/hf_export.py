"""params -> a Hugging Face checkpoint directory: the inverse of hf_import, through hf_import's own name table.

An exported encoder keeps the tensor names, prefixes and shapes of the checkpoint it was fine-tuned from
(`like`), so `transformers.AutoModel.from_pretrained(out)` and `encoder_jax.load_pretrained(out)` both load
it. No second name table: every tensor of `like` is mapped to its params path by hf_import.name_table (per family), and
the table's transform (a transpose and reshape) is inverted by pushing an index array through it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from encoder_jax import hf_import
from encoder_jax.config import EncoderConfig

# Tokenizer files copied beside the weights, so AutoTokenizer.from_pretrained(out) works too.
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt', 'vocab.json',
                   'merges.txt')


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
  """Encoder params -> tensors named and shaped as in `like` (a state dict read by hf_import.read_tensors).

  Tensors of `like` that params do not hold (task heads, buffers, layers beyond config.num_layers, a pooler
  the params lack) are left out; every params leaf must be written (an error lists any that are not).
  """
  out, used = {}, set()
  for raw, tensor in like.items():
    name = next((raw[len(p):] for p in hf_import.PREFIXES if raw.startswith(p)), raw)
    path, transform = hf_import.map_name(name, config.model_type)
    value = None if path is None else _leaf(params, path)
    if value is None:
      continue
    out[raw] = invert(transform, np.asarray(value), tuple(tensor.shape), config)
    used.add(path)
  leaves = set(hf_import.expected_shapes(config))
  leaves |= {'pooler/kernel', 'pooler/bias'} if 'pooler' in params else set()
  missing = sorted(leaves - used)
  if missing:
    raise ValueError(f'{len(missing)} parameter(s) have no tensor in the reference checkpoint: {missing[:5]}.')
  return out


def save_pretrained(params: dict[str, Any], config: EncoderConfig, out_dir, *, like) -> Path:
  """Writes out_dir/config.json and model.safetensors (and the tokenizer files) of an encoder whose
  architecture is that of checkpoint `like` (a directory, hub id or packaged name), with
  config.num_layers layers. Returns out_dir."""
  from safetensors.numpy import save_file
  source = hf_import.resolve(like)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors = to_hf_tensors(params, config, hf_import.read_tensors(source))
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / 'model.safetensors'),
            metadata={'format': 'pt'})  # transformers reads only files marked as torch-format
  hf_config = json.loads((source / 'config.json').read_text())
  hf_config['num_hidden_layers'] = config.num_layers  # an exit model keeps the layers up to its last exit
  (out / 'config.json').write_text(json.dumps(hf_config, indent=2) + '\n')
  for name in TOKENIZER_FILES:
    if (source / name).exists():
      shutil.copy(source / name, out / name)
  return out
