"""export.py's library half (exporter, encoder_jax.hf_export): exported directories load back through
encoder_jax.load_pretrained to exactly the trained parameters, in the source checkpoint's own tensor names.
(tests/fixtures/check_export.py checks with torch that transformers computes the same hidden states.)"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import encoder_jax
from drivers import exporter
from drivers import methods
from encoder_jax import hf_export
from pipeline import train_loop

FIXTURES = Path(__file__).parent / 'fixtures'


def assert_same_tree(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for path, (a, b) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path[0]))


@pytest.mark.parametrize('name', ['bert_tiny', 'roberta_tiny'])
def test_encoder_round_trip_keeps_names_shapes_and_values(name, tmp_path):
  source = FIXTURES / name  # prime sizes: a transposed or mis-reshaped tensor cannot keep its shape
  config, params = encoder_jax.load_pretrained(source)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), params)
  hf_export.save_pretrained(params, config, tmp_path / 'out', like=source)
  written = load_file(str(tmp_path / 'out' / 'model.safetensors'))
  original = load_file(str(source / 'model.safetensors'))
  assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in original.items()}
  config_back, params_back = encoder_jax.load_pretrained(tmp_path / 'out')
  assert config_back == config
  assert_same_tree(params_back, params)
  # A tensor the model does not hold is an error, not a silent gap.
  del params['layers_1']['key']
  with pytest.raises(ValueError, match='layers_1/key'):
    hf_export.to_hf_tensors(params, config, original)


def restored(config, workdir):
  built = methods.build(config, num_labels=2)
  return built, jax.device_get(train_loop.restore_params(config, workdir, built.method))


def test_sweet_export_loads_back_to_the_checkpoint(trained, tmp_path):
  config, workdir = trained('sweet')
  [out] = exporter.export(config, workdir, str(tmp_path / 'sweet'))
  built, params = restored(config, workdir)
  hf_config, params_back, info = exporter.load(out)
  assert hf_config.num_layers == 3 and json.loads((out / 'config.json').read_text())['num_hidden_layers'] == 3
  assert_same_tree(params_back, params)
  assert info['exit_layers'] == [1, 2, 3] and [e['after_layer'] for e in info['exits']] == [1, 2, 3]
  assert info['pooling'] == 'mean' and info['label_names'] == ['0', '1'] and info['temperatures'] == [1.0] * 3
  # The checkpoint's own names: every tensor of the source but the pooler (exits own theirs).
  source = load_file(str(trained.root / 'ckpt' / 'model.safetensors'))
  assert set(load_file(str(out / 'model.safetensors'))) == {k for k in source if not k.startswith('pooler.')}
  assert (out / 'tokenizer.json').exists()
  # Heads in torch nn.Linear layout [out, in].
  heads = load_file(str(out / 'exit_heads.safetensors'))
  np.testing.assert_array_equal(heads['exit_2.classifier.weight'], params['heads'][2]['classifier']['kernel'].T)
  np.testing.assert_array_equal(heads['exit_0.pooler.dense.weight'], params['heads'][0]['pooler']['kernel'].T)


def test_multi_model_exports_one_directory_per_member(trained, tmp_path):
  config, workdir = trained('multi_model')
  members = exporter.export(config, workdir, str(tmp_path / 'mm'))
  assert [m.name for m in members] == ['member_0', 'member_1', 'member_2']
  _, params = restored(config, workdir)
  for depth, member, model in zip((1, 2, 3), members, params['models']):
    hf_config, back, info = exporter.load(member)
    assert hf_config.num_layers == depth and info['exit_layers'] == [1, 2, 3] and info['member'] == depth - 1
    assert_same_tree(back, {'encoder': model['encoder'], 'heads': (model['head'],)})
  assert json.loads((tmp_path / 'mm' / 'exit_heads.json').read_text())['members'] == [m.name for m in members]


def test_constant_heads_export_their_matrices(trained, tmp_path):
  config, workdir = trained('papa')
  [out] = exporter.export(config, workdir, str(tmp_path / 'papa'))
  built, params = restored(config, workdir)
  info = json.loads((out / 'exit_heads.json').read_text())
  assert info['constant_heads'] == [[0, 0], [0, 1], [0, 2]]  # 'first_segment': every head of layer 1
  np.testing.assert_array_equal(load_file(str(out / 'constant_attention.safetensors'))['constants'],
                                np.asarray(built.constants))
  assert_same_tree(exporter.load(out)[1], params)
