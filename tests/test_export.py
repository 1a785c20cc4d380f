"""export.py's library half (exporter, encoder_jax.hf_export): exported directories load back through
encoder_jax.load_pretrained to exactly the trained parameters, in the source checkpoint's own tensor names.
(tests/fixtures/check_export.py checks with torch that transformers computes the same hidden states.)"""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import encoder_jax
from drivers import exporter
from drivers import methods
from encoder_jax import hf_export, hf_import
from pipeline import train_loop
from sweet_jax import exits

FIXTURES = Path(__file__).parent / 'fixtures'


def assert_same_tree(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for path, (a, b) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path[0]))


CLASSIFIERS = ['bert_cls', 'roberta_cls', 'mpnet_cls', 'deberta_v1_cls', 'deberta_v2_cls']


def _canonical(tensors):
  return {hf_import.canonical(k): v for k, v in tensors.items()}


def _classifier(name, tmp_path):
  """A transformers *ForSequenceClassification fixture, as this library reads it: (directory, config, encoder
  params, head, file tensors). deberta_v1_cls also carries microsoft/deberta-base's unused position table."""
  source = FIXTURES / name
  if name == 'deberta_v1_cls':
    source = tmp_path / name
    shutil.copytree(FIXTURES / name, source)
    tensors = load_file(str(source / 'model.safetensors'))
    tensors['deberta.embeddings.position_embeddings.weight'] = np.random.default_rng(0).normal(
        size=(41, 15)).astype(np.float32)
    save_file(tensors, str(source / 'model.safetensors'))
  tensors = load_file(str(source / 'model.safetensors'))
  config, params = encoder_jax.load_pretrained(source)
  return source, config, params, hf_export.head_from_tensors(tensors, config.model_type), tensors


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_export_of_an_import_is_the_checkpoint_bit_for_bit(name, tmp_path):
  """export(import(hf_dir)) writes every tensor of hf_dir (a transformers classifier) with its name, shape and
  bits, and nothing else; import(export(import(hf_dir))) gives identical arrays."""
  source, config, params, head, tensors = _classifier(name, tmp_path)
  params.pop('pooler', None)  # the head writes the pooler (BERT, DeBERTa), as a trained exit model holds none
  out = hf_export.save_pretrained(params, config, tmp_path / 'out', like=source, head=head, labels=['a', 'b', 'c'])
  written = load_file(str(out / 'model.safetensors'))
  assert sorted(written) == sorted(tensors)
  for key, value in tensors.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)
    assert written[key].dtype == value.dtype
  config_back, params_back = encoder_jax.load_pretrained(out)
  assert config_back == config
  assert_same_tree(params_back, {**params, **({'pooler': head['pooler']} if 'pooler' in params_back else {})})
  hf = json.loads((out / 'config.json').read_text())
  assert hf['num_labels'] == 3 and hf['id2label'] == {'0': 'a', '1': 'b', '2': 'c'} and hf['label2id']['c'] == 2


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_library_logits_equal_transformers_classifier(name, tmp_path):
  """The library's [CLS] exit on the imported encoder and head gives transformers' logits (fixture from
  tests/fixtures/interop_fixtures.py: a pair, right and left padding)."""
  _, config, params, head, _ = _classifier(name, tmp_path)
  with np.load(FIXTURES / f'{name}.npz', allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  types = ref['token_type_ids'] if config.type_vocab_size else None
  hidden = encoder_jax.encode(config, params, ref['input_ids'], ref['attention_mask'], types)[-1]
  logits = np.asarray(exits.apply_head(head, hidden, ref['attention_mask'], 'cls'))
  # Left padding puts a pad token where [CLS] should be; DeBERTa computes padded rows differently (they attend
  # uniformly in transformers, unseen by real tokens), so its left-padded row is not compared.
  rows = ref['attention_mask'][:, 0] == 1 if name.startswith('deberta') else slice(None)
  assert name.startswith('deberta') or not ref['attention_mask'][:, 0].all()  # BERT-likes: all three rows
  np.testing.assert_allclose(logits[rows], ref['logits'][rows], rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ['bert_tiny', 'roberta_tiny', 'mpnet_tiny', 'deberta_v1_tiny', 'deberta_v2_tiny',
                                  'deberta_v2_sep_tiny'])
def test_base_checkpoint_round_trip_keeps_shapes_and_values(name, tmp_path):
  source = FIXTURES / name  # prime sizes: a transposed or mis-reshaped tensor cannot keep its shape
  config, params = encoder_jax.load_pretrained(source)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), params)
  head = {'pooler': params.pop('pooler', None) or {'kernel': np.eye(15, dtype=np.float32),
                                                   'bias': np.zeros(15, np.float32)},
          'classifier': {'kernel': np.ones((15, 2), np.float32), 'bias': np.zeros(2, np.float32)}}
  hf_export.save_pretrained(params, config, tmp_path / 'out', like=source, head=head, labels=['no', 'yes'])
  written = _canonical(load_file(str(tmp_path / 'out' / 'model.safetensors')))
  original = _canonical(load_file(str(source / 'model.safetensors')))
  head_names = set(hf_export.head_tensors(head, config.model_type))
  assert {k: v.shape for k, v in written.items() if k not in _canonical(dict.fromkeys(head_names))} == {
      k: v.shape for k, v in original.items() if not k.startswith('pooler.')}
  config_back, params_back = encoder_jax.load_pretrained(tmp_path / 'out')
  assert config_back == config.replace() and config_back.num_layers == config.num_layers
  params_back.pop('pooler', None)
  assert_same_tree(params_back, params)
  # A tensor the model does not hold is an error, not a silent gap.
  del params['layers_1']['key']
  with pytest.raises(ValueError, match='layers_1/key'):
    hf_export.to_hf_tensors(params, config, load_file(str(source / 'model.safetensors')))


def restored(config, workdir):
  built = methods.build(config, num_labels=2)
  return built, jax.device_get(train_loop.restore_params(config, workdir, built.method))


def _exported_classifier(out):
  """What transformers would load from an export, read by this library: (config, encoder, head, file tensors)."""
  tensors = load_file(str(out / 'model.safetensors'))
  config, encoder = encoder_jax.load_pretrained(out)
  return config, encoder, hf_export.head_from_tensors(tensors, config.model_type), tensors


def _exit_logits(config, built, params, batch, index):
  logits = exits.forward(built.encoder_config, built.exit_config, params, batch, stop_gradient=False) if (
      config.method != 'multi_model') else exits.forward_multi_model(built.encoder_config, built.exit_config,
                                                                      params, batch)
  return np.asarray(logits[index])


def _batch(config):
  built = methods.build(config, num_labels=2)
  return built, dict(built.encode_fn(['good movie', 'the plot was dull and the acting awful', 'fine'], None),
                     labels=np.zeros(3, np.int32))


@pytest.fixture(scope='module')
def family_root(tmp_path_factory):
  """The task files of tests/trained_workdirs.py and every family's transformers classifier fixture (2 layers)
  with a word tokenizer."""
  from tests import trained_workdirs
  from tests.tiny_checkpoint import with_word_tokenizer
  root = trained_workdirs.task(tmp_path_factory.mktemp('families'))
  for name in CLASSIFIERS:
    with_word_tokenizer(FIXTURES / name, root / name)
  return root


# (checkpoint, method): every family with early_exit, Multi-Model on two, SWEET where the family can hold it.
CASES = [(name, 'early_exit') for name in CLASSIFIERS] + [('bert_cls', 'sweet'), ('roberta_cls', 'sweet'),
                                                         ('deberta_v1_cls', 'multi_model'), ('mpnet_cls', 'multi_model')]


@pytest.mark.parametrize('name, method', CASES)
def test_export_is_a_transformers_classifier_of_the_chosen_exit(family_root, name, method, tmp_path):
  """[CLS] exits: the export holds exactly the names and shapes transformers' *ForSequenceClassification saves
  (the fixture, written by transformers), its labels, and the chosen exit: read back, its head on its encoder
  gives the exit's logits; --exit 1 a truncated 1-layer model of exit 1. exporter.load gives every exit back."""
  from tests import trained_workdirs
  config, workdir = trained_workdirs.make_workdir(family_root, f'{name}_{method}', method, evaluate=False,
                                                  checkpoint=str(family_root / name), exit_layers=(1, 2),
                                                  pooling='cls')
  built, batch = _batch(config)
  params = restored(config, workdir)[1]
  reference = load_file(str(FIXTURES / name / 'model.safetensors'))
  for exit_layer, index in ((None, 1), (1, 0)):
    out = tmp_path / f'exit_{exit_layer}'
    [main, *members] = exporter.export(config, workdir, str(out), exit_layer=exit_layer)
    hf_config, encoder, head, tensors = _exported_classifier(main)
    assert main == out and hf_config.num_layers == index + 1
    names = {k for k in reference if not re.search(rf'layer\.([{index + 1}-9])\.', k)}
    assert {k: v.shape for k, v in tensors.items() if 'classifier' not in k or 'dense' in k} == {
        k: reference[k].shape for k in names if 'classifier' not in k or 'dense' in k}
    assert {k for k in tensors if 'classifier' in k} == {k for k in reference if 'classifier' in k}
    hf = json.loads((main / 'config.json').read_text())
    assert hf['id2label'] == {'0': '0', '1': '1'} and hf['label2id'] == {'0': 0, '1': 1} and hf['num_labels'] == 2
    hidden = encoder_jax.encode(hf_config, encoder, batch['input_ids'], batch['attention_mask'],
                                batch['token_type_ids'] if hf_config.type_vocab_size else None)[-1]
    np.testing.assert_allclose(np.asarray(exits.apply_head(head, hidden, batch['attention_mask'], 'cls')),
                               _exit_logits(config, built, params, batch, index), rtol=0, atol=2e-5)
    info = json.loads((out / 'exits.json').read_text())
    assert info['transformers_head'] == {**info['transformers_head'], 'exit_layer': index + 1, 'exact': True}
    assert_same_tree(exporter.load(out)[1], params)
    assert len(members) == (2 if method == 'multi_model' else 0)
  with pytest.raises(ValueError, match=r'the exits sit after layers \[1, 2\]'):
    exporter.export(config, workdir, str(tmp_path / 'x'), exit_layer=3)


@pytest.mark.parametrize('method', ['early_exit', 'multi_model'])
def test_a_trained_deberta_v1_exports_and_reloads_its_logits(family_root, method, tmp_path):
  """A real AdamW step (the method's loss, train_loop's optimizer and step) on DeBERTa v1 with c2p and p2c. v1
  has no key bias (nor position-key bias), so training cannot give it one that transformers' DeBERTa cannot
  hold: the export succeeds, and import(export(trained)) gives the trained exit's logits."""
  from tests import trained_workdirs
  config, workdir = trained_workdirs.make_workdir(family_root, f'v1_trained_{method}', method, evaluate=False,
                                                  checkpoint=str(family_root / 'deberta_v1_cls'), exit_layers=(1, 2),
                                                  pooling='cls', train_steps=1)
  built, batch = _batch(config)
  params = restored(config, workdir)[1]
  initial = built.method.init(jax.random.key(7))
  encoders = [m['encoder'] for m in params['models']] if method == 'multi_model' else [params['encoder']]
  first = (initial['models'][0] if method == 'multi_model' else initial)['encoder']
  assert np.abs(encoders[0]['layers_0']['query']['bias'] - first['layers_0']['query']['bias']).max() > 1e-4
  for encoder in encoders:  # trained: the step moved the query bias; there is no key bias to move
    for layer in [k for k in encoder if k.startswith('layers_')]:
      assert 'bias' not in encoder[layer]['key'] and 'bias' not in encoder[layer]['pos_key']
  out = exporter.export(config, workdir, str(tmp_path / 'out'))[0]
  hf_config, encoder, head, _ = _exported_classifier(out)
  hidden = encoder_jax.encode(hf_config, encoder, batch['input_ids'], batch['attention_mask'])[-1]
  np.testing.assert_allclose(np.asarray(exits.apply_head(head, hidden, batch['attention_mask'], 'cls')),
                             _exit_logits(config, built, params, batch, 1), rtol=0, atol=2e-5)


def test_sweet_export_of_a_family_with_shared_layers_is_refused(family_root):
  from tests import trained_workdirs
  config, workdir = trained_workdirs.make_workdir(family_root, 'mpnet_sweet', 'sweet', evaluate=False,
                                                  checkpoint=str(family_root / 'mpnet_cls'), exit_layers=(1, 2))
  with pytest.raises(ValueError, match='one transformers model cannot hold them'):
    exporter.export(config, workdir, str(family_root / 'refused'))


def test_mean_pooling_export_holds_the_pretrained_pooler_and_every_exit(family_root, tmp_path):
  """A mean-pooling exit has no transformers head: the export's bert.pooler is the pretrained one (bert_cls has
  one) under the exit's classifier, exits.json says it is not exact, and exporter.load gives every exit back."""
  from tests import trained_workdirs
  config, workdir = trained_workdirs.make_workdir(family_root, 'bert_mean', 'sweet', evaluate=False,
                                                  checkpoint=str(family_root / 'bert_cls'), exit_layers=(1, 2),
                                                  pooling='mean')
  [out] = exporter.export(config, workdir, str(tmp_path / 'sweet'))
  _, params = restored(config, workdir)
  tensors = load_file(str(out / 'model.safetensors'))
  source = load_file(str(FIXTURES / 'bert_cls' / 'model.safetensors'))
  np.testing.assert_array_equal(tensors['bert.pooler.dense.weight'], source['bert.pooler.dense.weight'])
  np.testing.assert_array_equal(tensors['classifier.weight'], params['heads'][1]['classifier']['kernel'].T)
  info = json.loads((out / 'exits.json').read_text())
  assert info['transformers_head']['exact'] is False and 'masked mean' in info['transformers_head']['note']
  config_back, params_back, _ = exporter.load(out)
  assert config_back.num_layers == 2 and info['exit_layers'] == [1, 2]
  assert_same_tree(params_back, params)
  # Untrained, the exit's pooler still is the pretrained one; the rule itself, with three different poolers:
  own, pretrained = {'kernel': np.ones((2, 2))}, {'kernel': np.zeros((2, 2))}
  head = {'pooler': own, 'classifier': {'kernel': np.eye(2)}}
  assert exporter.transformers_head(head, 'mean', pretrained) == {**head, 'pooler': pretrained}
  assert exporter.transformers_head(head, 'cls', pretrained) is head
  assert exporter.transformers_head(head, 'mean', None) is head


def test_evaluated_workdir_export_records_temperatures(trained, tmp_path):
  config, workdir = trained('sweet')  # tiny BERT without a pooler: the exit's own pooler is written
  [out] = exporter.export(config, workdir, str(tmp_path / 'sweet'))
  info = json.loads((out / 'exits.json').read_text())
  assert info['exit_layers'] == [1, 2, 3] and info['label_names'] == ['0', '1'] and info['temperatures'] == [1.0] * 3
  assert info['checkpoint_step'] == 1 and 'run_identity' in info  # what it holds (this tiny workdir records none)
  assert info['run_identity_digest'] and 'git_commit' in info['code']
  _, params = restored(config, workdir)
  np.testing.assert_array_equal(load_file(str(out / 'model.safetensors'))['bert.pooler.dense.weight'],
                                params['heads'][2]['pooler']['kernel'].T)


def test_constant_heads_export_their_matrices(trained, tmp_path):
  config, workdir = trained('papa')
  [out] = exporter.export(config, workdir, str(tmp_path / 'papa'))
  built, params = restored(config, workdir)
  info = json.loads((out / 'exits.json').read_text())
  assert info['constant_heads'] == [[0, 0], [0, 1], [0, 2]]  # 'first_segment': every head of layer 1
  assert info['transformers_head']['exact'] is False and 'constant heads' in info['transformers_head']['note']
  np.testing.assert_array_equal(load_file(str(out / 'constant_attention.safetensors'))['constants'],
                                np.asarray(built.constants))
  assert_same_tree(exporter.load(out)[1], params)
