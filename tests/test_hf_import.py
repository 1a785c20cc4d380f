"""Loading Hugging Face checkpoints: the name table, every error at once, no pickle, and the hub code path
against a local fake Hugging Face cache (no network, no torch)."""

import functools
import json
import shutil
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import encoder_jax
from encoder_jax import hf_import
from encoder_jax.hf_import import CheckpointError

TINY = Path(__file__).parent / 'fixtures' / 'bert_tiny'


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _keystr(path: str) -> str:
  """'a/b/c' -> jax.tree_util.keystr's "['a']['b']['c']"."""
  return "['" + "']['".join(path.split('/')) + "']"


def _copy(tmp_path, tensors=None, config=None, name='ckpt'):
  """A checkpoint directory in tmp_path from the tiny BERT, with tensors and/or config replaced."""
  directory = tmp_path / name
  directory.mkdir()
  cfg = json.loads((TINY / 'config.json').read_text())
  cfg.update(config or {})
  (directory / 'config.json').write_text(json.dumps(cfg))
  save_file(load_file(TINY / 'model.safetensors') if tensors is None else tensors, directory / 'model.safetensors')
  return directory


def test_param_tree_is_exactly_the_expected_one():
  config, params = encoder_jax.load_pretrained(TINY)
  shapes = {k: v.shape for k, v in _flat(params).items()}
  want = {_keystr(path): shape for path, shape in hf_import.expected_shapes(config).items()}
  want["['pooler']['kernel']"], want["['pooler']['bias']"] = (15, 15), (15,)
  assert shapes == want
  assert all(v.dtype == np.float32 and v.flags.writeable for v in _flat(params).values())
  # Per-head layout: query kernel [in, heads, head_dim] is the transposed torch weight [out, in].
  torch_q = load_file(TINY / 'model.safetensors')['encoder.layer.1.attention.self.query.weight']
  np.testing.assert_array_equal(params['layers_1']['query']['kernel'].reshape(15, 15), torch_q.T)


# Every family and the config switches that change its parameter set (v1 without relative attention, v2 with
# and without share_att_key, v3 without absolute positions, v2's convolution).
FAMILY_FIXTURES = ['bert_tiny', 'roberta_tiny', 'mpnet_tiny', 'deberta_v1_tiny', 'parity_deberta_v1_norel',
                   'deberta_v2_tiny', 'deberta_v2_sep_tiny', 'parity_deberta_v3']


@pytest.mark.parametrize('name', FAMILY_FIXTURES)
def test_random_init_has_the_loaded_structure(name):
  """The encoder's own parameter tree (init, traced) is expected_shapes' (the shared encoder's and the family's
  Family.parameter_shapes) and the loaded checkpoint's."""
  config, loaded = encoder_jax.load_pretrained(TINY.parent / name)
  init = jax.eval_shape(functools.partial(encoder_jax.init_params, config), jax.random.key(0))
  init_shapes = {k: v.shape for k, v in _flat(init).items()}
  assert init_shapes == {_keystr(path): shape for path, shape in hf_import.expected_shapes(config).items()}
  assert init_shapes == {k: v.shape for k, v in _flat(loaded).items() if not k.startswith("['pooler']")}


def test_missing_directory():
  with pytest.raises(CheckpointError, match='No such checkpoint directory'):
    encoder_jax.load_pretrained('./no/such/dir')


def test_file_instead_of_directory():
  with pytest.raises(CheckpointError, match='is a file'):
    encoder_jax.load_pretrained(TINY / 'config.json')


def test_missing_config(tmp_path):
  directory = _copy(tmp_path)
  (directory / 'config.json').unlink()
  with pytest.raises(CheckpointError, match='no config.json'):
    encoder_jax.load_pretrained(directory)


def test_missing_weights(tmp_path):
  directory = _copy(tmp_path)
  (directory / 'model.safetensors').unlink()
  with pytest.raises(CheckpointError, match='holds no model.safetensors'):
    encoder_jax.load_pretrained(directory)


def test_every_problem_is_listed_at_once(tmp_path):
  tensors = load_file(TINY / 'model.safetensors')
  tensors['encoder.layer.0.attention.self.query.weight'] = np.zeros((14, 15), np.float32)
  tensors['encoder.layer.2.intermediate.dense.bias'] = np.zeros((36,), np.float32)
  del tensors['encoder.layer.1.output.LayerNorm.bias']
  tensors['encoder.layer.0.attention.self.rotary.weight'] = np.zeros((2,), np.float32)
  tensors['encoder.layer.3.output.dense.bias'] = np.zeros((15,), np.float32)  # a 4th layer; config has 3
  with pytest.raises(CheckpointError) as info:
    encoder_jax.load_pretrained(_copy(tmp_path, tensors))
  message = str(info.value)
  assert message.startswith('5 problem(s)')
  for part in ("shape mismatch for 'encoder.layer.0.attention.self.query.weight': checkpoint (14, 15)",
               "shape mismatch for 'encoder.layer.2.intermediate.dense.bias': checkpoint (36,)",
               'missing tensor for layers_1/output_layer_norm/bias',
               "unexpected tensor 'encoder.layer.0.attention.self.rotary.weight'",
               "'encoder.layer.3.output.dense.bias': layer beyond num_layers=3"):
    assert part in message, part


def test_half_a_pooler_is_an_error(tmp_path):
  tensors = load_file(TINY / 'model.safetensors')
  del tensors['pooler.dense.bias']
  with pytest.raises(CheckpointError, match='pooler/bias'):
    encoder_jax.load_pretrained(_copy(tmp_path, tensors))
  del tensors['pooler.dense.weight']  # no pooler at all is fine
  _, params = encoder_jax.load_pretrained(_copy(tmp_path, tensors, name='nopool'))
  assert 'pooler' not in params


def test_task_checkpoint_prefix_and_heads_are_handled(tmp_path):
  """A BertForSequenceClassification file: 'bert.' prefixes, a classifier and buffers to ignore."""
  tensors = {f'bert.{k}': v for k, v in load_file(TINY / 'model.safetensors').items()}
  tensors['classifier.weight'] = np.ones((2, 15), np.float32)
  tensors['bert.embeddings.position_ids'] = np.arange(41, dtype=np.int64)[None]
  _, params = encoder_jax.load_pretrained(_copy(tmp_path, tensors))
  _, want = encoder_jax.load_pretrained(TINY)
  jax.tree.map(np.testing.assert_array_equal, params, want)


def _write_safetensors(path, tensors):
  """A safetensors file written by hand, so that bfloat16 (which safetensors.numpy cannot write) is possible."""
  names = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16', np.dtype(ml_dtypes.bfloat16): 'BF16'}
  header, blobs, offset = {}, [], 0
  for name, array in tensors.items():
    blob = np.ascontiguousarray(array).tobytes()
    header[name] = {'dtype': names[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  raw = json.dumps(header).encode()
  path.write_bytes(len(raw).to_bytes(8, 'little') + raw + b''.join(blobs))


def test_bfloat16_and_float16_checkpoints_load(tmp_path):
  tensors = load_file(TINY / 'model.safetensors')
  low = {k: v.astype(ml_dtypes.bfloat16 if i % 2 else np.float16) for i, (k, v) in enumerate(tensors.items())}
  directory = _copy(tmp_path)
  _write_safetensors(directory / 'model.safetensors', low)
  _, params = encoder_jax.load_pretrained(directory)
  _, want = encoder_jax.load_pretrained(TINY)
  leaves = _flat(params)
  assert all(v.dtype == np.float32 for v in leaves.values())
  for key, value in _flat(want).items():  # bfloat16 keeps 8 bits of mantissa
    np.testing.assert_allclose(leaves[key], value, rtol=1e-2, atol=1e-6, err_msg=key)


def test_sharded_safetensors_index(tmp_path):
  tensors = load_file(TINY / 'model.safetensors')
  directory = _copy(tmp_path)
  (directory / 'model.safetensors').unlink()
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[::2], 'model-00002-of-00002.safetensors': names[1::2]}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, directory / shard)
  weight_map = {k: shard for shard, keys in shards.items() for k in keys}
  (directory / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  _, params = encoder_jax.load_pretrained(directory)
  _, want = encoder_jax.load_pretrained(TINY)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  (directory / 'model-00002-of-00002.safetensors').unlink()
  with pytest.raises(CheckpointError, match='model-00002-of-00002'):
    encoder_jax.load_pretrained(directory)


def test_pickled_bin_is_refused_without_reading_it(tmp_path):
  directory = _copy(tmp_path)
  (directory / 'model.safetensors').unlink()
  (directory / 'pytorch_model.bin').write_bytes(b'not even a pickle')  # refusal comes before any read
  with pytest.raises(CheckpointError, match='pickle') as info:
    encoder_jax.load_pretrained(directory)
  assert 'allow_pickle=True' in str(info.value)


@pytest.mark.parametrize('change, match', [
    ({'model_type': 'gpt2'}, "Unsupported model_type 'gpt2'"),
    ({'hidden_act': 'relu'}, 'hidden_act'),
    ({'position_embedding_type': 'relative_key'}, 'position_embedding_type'),
    ({'num_attention_heads': 4}, 'not divisible'),
])
def test_unsupported_config_names_the_file(tmp_path, change, match):
  with pytest.raises(CheckpointError, match=match) as info:
    encoder_jax.load_pretrained(_copy(tmp_path, config=change))
  assert 'config.json' in str(info.value)


def test_config_overrides_and_shape_checks_against_config(tmp_path):
  config, _ = encoder_jax.load_pretrained(TINY, dtype='bfloat16')
  assert config.dtype == 'bfloat16'
  with pytest.raises(CheckpointError, match='shape mismatch'):  # config and weights disagree on width
    encoder_jax.load_pretrained(_copy(tmp_path, config={'intermediate_size': 38}))


def test_packaged_minilm_resolves():
  directory = hf_import.resolve('minilm')
  assert (directory / 'config.json').exists() and (directory / 'model.safetensors').exists()


def _fake_hub_cache(root: Path, repo: str, files_from: Path) -> Path:
  """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<sha>/files}."""
  sha = '0123456789abcdef0123456789abcdef01234567'
  repo_dir = root / ('models--' + repo.replace('/', '--'))
  snapshot = repo_dir / 'snapshots' / sha
  snapshot.mkdir(parents=True)
  for f in files_from.iterdir():
    shutil.copy(f, snapshot / f.name)
  (repo_dir / 'refs').mkdir()
  (repo_dir / 'refs' / 'main').write_text(sha)
  return snapshot


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
  import huggingface_hub.constants as hf_constants
  cache = tmp_path / 'hub'
  # huggingface_hub reads these variables once, at import; patch both the environment and its constants.
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.chdir(tmp_path)  # so that 'org/name' is not a local path by accident
  return cache


def test_hub_id_loads_from_the_local_cache(fake_hub):
  snapshot = _fake_hub_cache(fake_hub, 'org/tiny-bert', TINY)
  assert hf_import.resolve('org/tiny-bert').resolve() == snapshot.resolve()
  config, params = encoder_jax.load_pretrained('org/tiny-bert')
  _, want = encoder_jax.load_pretrained(TINY)
  assert config.hidden_size == 15
  jax.tree.map(np.testing.assert_array_equal, params, want)


def test_hub_id_not_cached_offline_is_a_clear_error(fake_hub):
  with pytest.raises(CheckpointError, match="'org/absent' is neither a local directory"):
    encoder_jax.load_pretrained('org/absent')


def test_truncated_safetensors_is_a_clear_error(tmp_path):
  directory = _copy(tmp_path)
  raw = (directory / 'model.safetensors').read_bytes()
  (directory / 'model.safetensors').write_bytes(raw[:-100])
  with pytest.raises(CheckpointError, match='not a readable safetensors file'):
    encoder_jax.load_pretrained(directory)
  (directory / 'model.safetensors').write_bytes(b'\x05\x00')
  with pytest.raises(CheckpointError, match='not a readable safetensors file'):
    encoder_jax.load_pretrained(directory)


FIXTURES = Path(__file__).parent / 'fixtures'
# What the hub checkpoints the paper configs name carry beside the encoder (names as in their files), per
# transformers *ForSequenceClassification fixture of the family: pre-training heads, buffers, legacy names.
_HEAD = np.ones((5, 15), np.float32)
REAL_EXTRAS = {
    'bert_cls': {'cls.predictions.bias': np.ones(101, np.float32), 'cls.predictions.transform.dense.weight':
                 np.ones((15, 15), np.float32), 'cls.predictions.transform.LayerNorm.gamma': np.ones(15, np.float32),
                 'cls.seq_relationship.weight': np.ones((2, 15), np.float32),
                 'bert.embeddings.position_ids': np.arange(41, dtype=np.int64)[None]},  # bert-base-uncased
    'roberta_cls': {'lm_head.dense.weight': np.ones((15, 15), np.float32), 'lm_head.layer_norm.weight': _HEAD[0],
                    'lm_head.bias': np.ones(101, np.float32)},  # roberta-base
    'mpnet_cls': {'lm_head.dense.weight': np.ones((15, 15), np.float32), 'lm_head.decoder.bias': _HEAD[0]},
    'deberta_v1_cls': {'deberta.embeddings.position_embeddings.weight': np.ones((41, 15), np.float32),
                       'lm_predictions.lm_head.dense.weight': np.ones((15, 15), np.float32),
                       'lm_predictions.lm_head.bias': np.ones(101, np.float32)},  # microsoft/deberta-base
    'deberta_v2_cls': {'deberta.embeddings.position_embeddings.weight': np.ones((41, 15), np.float32),
                       'mask_predictions.dense.weight': np.ones((15, 15), np.float32),
                       'mask_predictions.classifier.weight': _HEAD[:1]},  # microsoft/deberta-v3-base
}


PAPER_IDS = {'bert_cls': 'bert-base-uncased', 'roberta_cls': 'roberta-base', 'mpnet_cls': 'microsoft/mpnet-base',
             'deberta_v1_cls': 'microsoft/deberta-base', 'deberta_v2_cls': 'microsoft/deberta-v3-base'}


@pytest.mark.parametrize('name', sorted(REAL_EXTRAS))
def test_real_checkpoint_names_load_as_transformers_loads_them(name, tmp_path, fake_hub):
  """Every family's checkpoint with the tensors transformers ignores (hf_import.IGNORED_TENSORS, DeBERTa's
  unused absolute positions) and bert-base-uncased's legacy LayerNorm.gamma/.beta: loads, to the same params,
  from a directory and through the hub cache under the id the paper configs name."""
  tensors = load_file(FIXTURES / name / 'model.safetensors')
  if name == 'bert_cls':  # bert-base-uncased's files still name layer norms gamma and beta
    tensors = {k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
               for k, v in tensors.items()}
  directory = tmp_path / name
  directory.mkdir()
  shutil.copy(FIXTURES / name / 'config.json', directory / 'config.json')
  save_file({**tensors, **REAL_EXTRAS[name]}, directory / 'model.safetensors')
  _, params = encoder_jax.load_pretrained(directory)
  _, want = encoder_jax.load_pretrained(FIXTURES / name)
  assert 'gamma' not in str(_flat(params)) and _flat(params).keys() == _flat(want).keys()
  jax.tree.map(np.testing.assert_array_equal, params, want)
  _fake_hub_cache(fake_hub, PAPER_IDS[name], directory)
  jax.tree.map(np.testing.assert_array_equal, encoder_jax.load_pretrained(PAPER_IDS[name])[1], want)
  # Ignoring stays narrow: a tensor nobody knows is still an error, named as in the file.
  save_file({**tensors, 'deberta.encoder.layer.0.attention.self.extra.weight': _HEAD}, directory / 'model.safetensors')
  with pytest.raises(CheckpointError, match='extra.weight'):
    encoder_jax.load_pretrained(directory)


def test_hub_repo_with_only_pickled_weights_says_what_to_do(fake_hub, tmp_path):
  """A hub repo (from the cache, offline) that offers only pytorch_model.bin: the error names both ways out."""
  source = tmp_path / 'src'
  source.mkdir()
  shutil.copy(TINY / 'config.json', source / 'config.json')
  (source / 'pytorch_model.bin').write_bytes(b'not read')
  _fake_hub_cache(fake_hub, 'org/pickled', source)
  with pytest.raises(CheckpointError, match='offers only pickled weights') as info:
    encoder_jax.load_pretrained('org/pickled')
  assert 'revision=' in str(info.value) and 'allow_pickle=True' in str(info.value)
