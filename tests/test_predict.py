"""predict.py and predictor.Predictor on tiny checkpointed workdirs (tests/trained_workdirs.py): the adaptive
engine's answers equal what eval.py scored (threshold 1: the last exit) and what the offline sweep derives from
every exit's logits (any threshold, temperatures read from the workdir); bad inputs are errors naming the row,
file or workdir."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from drivers import methods
from drivers import predictor
from drivers import sweet_eval
from pipeline import data, train_loop
from sweet_jax import curves, device_stream
from tests.script_env import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def offline(config, workdir):
  """Every exit's logits [E, N, C] and the labels [N] of the eval split, through the forward eval.py scores with."""
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  params = train_loop.restore_params(config, workdir, built.method)
  forward = sweet_eval.forward_fn(config.method, built.encoder_config, built.exit_config, built.constants)
  batches = sweet_eval.tokenized_batches(splits.eval, built.encode_fn, 8)
  logits, labels, _ = sweet_eval.all_exit_logits(forward, params, batches)
  return logits, labels, list(splits.eval.texts[0])


def softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_threshold_one_answers_with_the_last_exit_that_eval_scored(trained):
  config, workdir = trained('sweet')
  logits, labels, texts = offline(config, workdir)
  model = predictor.Predictor(config, workdir, threshold=1.0)
  out = model(texts)
  assert model.mode == 'stream'  # the device-scheduled engine
  compiled = device_stream.chunk._cache_size()  # pylint: disable=protected-access
  assert compiled >= 1
  model(texts[::-1])
  assert device_stream.chunk._cache_size() == compiled  # built once: a second call compiles nothing
  np.testing.assert_array_equal(out.exit_index, np.full(len(texts), 2))
  np.testing.assert_array_equal(out.label_ids, logits[-1].argmax(-1))
  scored = json.loads(open(os.path.join(workdir, 'eval', 'per_exit_accuracy.json')).read())['accuracy'][-1]
  assert np.mean(out.label_ids == labels) == pytest.approx(scored, abs=1e-12)


def test_a_chosen_threshold_equals_the_offline_sweep_with_the_workdirs_temperatures(trained, tmp_path):
  config, workdir = trained('sweet')
  logits, _, texts = offline(config, workdir)
  # max_accuracy_drop: the point of eval/curve.json with the fewest FLOPs among those within 0.5 points.
  curve = json.loads(open(os.path.join(workdir, 'eval', 'curve.json')).read())
  full = json.loads(open(os.path.join(workdir, 'eval', 'per_exit_accuracy.json')).read())['accuracy'][-1]
  ok = [p for p in curve['points'] if p['accuracy'] >= full - 0.005]
  want = sorted(ok, key=lambda p: (p['flops_fraction'], -p['accuracy']))[0]['threshold']
  assert predictor.Predictor(config, workdir, max_accuracy_drop=0.5).threshold == want
  # Temperatures are read from the workdir: a copy with other temperatures answers as the sweep at those.
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  temps = np.array([0.5, 2.0, 1.3], np.float32)
  (copy / 'eval' / 'temperatures.json').write_text(json.dumps({'temperatures': temps.tolist()}))
  for dir_, t in ((workdir, np.ones(3, np.float32)), (str(copy), temps)):
    for threshold in (0.6, 0.7):
      model = predictor.Predictor(config, dir_, threshold=threshold)
      out = model(texts, all_exits=True)
      exit_index, preds = map(np.asarray, curves.assign_exits(logits, t, threshold))
      assert 0 < np.sum(exit_index == 0) < len(texts)  # the threshold splits the examples
      np.testing.assert_array_equal(out.exit_index, exit_index)
      np.testing.assert_array_equal(out.label_ids, preds)
      probs = softmax(np.asarray(logits, np.float64) / t[:, None, None])
      np.testing.assert_allclose(out.all_probabilities, probs, atol=1e-5)
      np.testing.assert_allclose(out.confidence, probs[exit_index, np.arange(len(texts)), preds], atol=1e-5)
      np.testing.assert_array_equal(out.layers, np.array([1, 2, 3])[exit_index])
      summary = model.summary(out)
      assert summary['exit_counts'] == np.bincount(exit_index, minlength=3).tolist()
      assert summary['layer_fraction'] == pytest.approx(np.array([1, 2, 3])[exit_index].sum() / (3 * len(texts)))


@pytest.mark.parametrize('name', ['multi_model', 'papa'])
def test_multi_model_and_constant_heads_follow_the_offline_sweep(trained, name):
  config, workdir = trained(name)
  logits, _, texts = offline(config, workdir)
  model = predictor.Predictor(config, workdir, threshold=0.65)  # never evaluated: temperatures 1
  out = model(texts)
  exit_index, preds = map(np.asarray, curves.assign_exits(logits, np.ones(3), 0.65))
  assert 0 < np.sum(exit_index == 0) < len(texts)
  np.testing.assert_array_equal(out.exit_index, exit_index)
  np.testing.assert_array_equal(out.label_ids, preds)
  cumulative = np.array([1, 3, 6]) if name == 'multi_model' else np.array([1, 2, 3])  # members re-encode
  assert model.summary(out)['layer_fraction'] == pytest.approx(cumulative[exit_index].sum() / (3 * len(texts)))


def test_choose_threshold_takes_the_cheapest_point_within_the_drop():
  points = [{'threshold': t, 'accuracy': a, 'layer_fraction': f, 'flops_fraction': f, 'measured_speedup': 1 / f}
            for t, a, f in ((0.5, 0.70, 0.3), (0.6, 0.795, 0.5), (0.7, 0.805, 0.7), (0.8, 0.81, 0.9), (1.0, 0.80, 1))]
  curve = {'points': points, 'rule': 'confidence'}
  assert predictor.choose_threshold(curve, 0.80, 0.5)[0] == 0.6  # 0.795 is 0.5 points below 0.80
  assert predictor.choose_threshold(curve, 0.80, 0.4)[0] == 0.7
  assert predictor.choose_threshold(curve, 0.80, 10.0)[0] == 0.5
  with pytest.raises(ValueError, match='No evaluated threshold'):
    predictor.choose_threshold(curve, 0.90, 0.5)


def test_bad_inputs_name_the_row_or_path(tmp_path):
  bad = [('empty.csv', 'text,label\ngood film,1\n,0\n', 'line 3'),
         ('missing.jsonl', '{"text": "good"}\n{"sentence": "bad"}\n', "line 2 has no field 'text'"),
         ('blank.txt', 'good film\n\nbad film\n', 'line 2'),
         ('nocolumn.csv', 'sentence\ngood\n', "no column 'text'")]
  for name, content, message in bad:
    (tmp_path / name).write_text(content)
    with pytest.raises(data.DataError, match=message):
      predictor.read_inputs(str(tmp_path / name), ('text',))
  with pytest.raises(data.DataError, match='nope.csv'):
    predictor.read_inputs(str(tmp_path / 'nope.csv'), ('text',))
  with pytest.raises(data.DataError, match='a pair'):
    predictor.read_inputs('-', ('premise', 'hypothesis'), stdin=io.StringIO('only one text\n'))
  got = predictor.read_inputs('-', ('premise', 'hypothesis'), stdin=io.StringIO('a cat\ta pet\nrain\twet\n'))
  assert got.examples() == [('a cat', 'a pet'), ('rain', 'wet')] and got.where == ('line 1', 'line 2')


def test_bad_workdirs_are_named(trained, tmp_path):
  config, workdir = trained('multi_model')  # checkpointed, never evaluated
  with pytest.raises(predictor.WorkdirError, match=str(tmp_path / 'nowhere')):
    predictor.Predictor(config, str(tmp_path / 'nowhere'), threshold=0.9)
  with pytest.raises(predictor.WorkdirError, match='curve.json does not exist: this workdir was never evaluated'):
    predictor.Predictor(config, workdir, max_accuracy_drop=0.5)


def test_predict_cli_writes_rows_in_input_order(trained, tmp_path):
  config, workdir = trained('sweet')
  _, _, texts = offline(config, workdir)
  (tmp_path / 'config.py').write_text(
      'import pathlib\nfrom tests import trained_workdirs\n\n\ndef get_config():\n'
      f'  return trained_workdirs.config_for(pathlib.Path({str(trained.root)!r}), "sweet")\n')
  (tmp_path / 'in.txt').write_text('\n'.join(texts) + '\n')
  env = script_env()
  run = lambda *args: subprocess.run([sys.executable, 'predict.py', '--config', str(tmp_path / 'config.py'),
                                      '--workdir', workdir, *args], cwd=ROOT, env=env, capture_output=True,
                                     text=True, timeout=600)
  done = run('--input', str(tmp_path / 'in.txt'), '--output', str(tmp_path / 'out.jsonl'), '--threshold', '0.7',
             '--all_exits')
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / 'out.jsonl').read_text().splitlines()]
  want = predictor.Predictor(config, workdir, threshold=0.7)(texts, all_exits=True)
  assert [r['row'] for r in rows] == list(range(len(texts))) and rows[3]['line'] == 4
  assert [r['label'] for r in rows] == [want.label_names[i] for i in want.label_ids]
  assert [r['exit'] for r in rows] == want.exit_index.tolist()
  np.testing.assert_allclose([r['probabilities'] for r in rows], want.all_probabilities.transpose(1, 0, 2),
                             atol=1e-6)
  assert f'{len(texts)} examples' in done.stderr and '0 text(s) truncated' in done.stderr
  done = run('--input', str(tmp_path / 'none.csv'), '--threshold', '0.7')
  assert done.returncode == 1 and 'none.csv: no such data file' in done.stderr and 'Traceback' not in done.stderr


@pytest.mark.parametrize('name, short, long', [('sweet', 'good film', 'good film ' * 10),  # 16 tokens at most
                                               ('papa', 'good film', 'good film ' * 3)])  # 5 of sentence A
def test_truncated_texts_are_counted(trained, name, short, long):
  config, workdir = trained(name)
  model = predictor.Predictor(config, workdir, threshold=0.7)
  out = model([short, long, short])
  np.testing.assert_array_equal(out.truncated, [False, True, False])
  assert model.summary(out)['truncated'] == 1


def test_pairs_follow_the_offline_sweep(trained):
  config, workdir = trained('sweet')
  config = config.copy_and_resolve_references()
  config.data.text_fields = ('premise', 'hypothesis')  # the model reads pairs the same way; only inputs change
  pairs = [('good plot', 'the acting fine'), ('awful', 'dull movie great'), ('the movie', 'bad'),
           ('fine acting great', 'good'), ('dull plot', 'awful the movie')]
  model = predictor.Predictor(config, workdir, threshold=0.65)
  out = model(pairs)
  built = model.built
  dataset = data.TextDataset(tuple(zip(*pairs)), np.zeros(len(pairs), np.int32), ('0', '1'))
  forward = sweet_eval.forward_fn('sweet', built.encoder_config, built.exit_config, None)
  logits, _, _ = sweet_eval.all_exit_logits(forward, model.params,
                                            sweet_eval.tokenized_batches(dataset, built.encode_fn, 8))
  exit_index, preds = map(np.asarray, curves.assign_exits(logits, np.ones(3), 0.65))
  np.testing.assert_array_equal(out.exit_index, exit_index)
  np.testing.assert_array_equal(out.label_ids, preds)
  with pytest.raises(ValueError, match=r"input 1: the model reads 2 text\(s\)"):
    model([('a', 'b'), 'just one'])


def test_all_exits_checks_the_engine_against_the_sweep_up_to_ties(trained):
  """all_exits compares the engine's answers with the offline sweep of every exit's logits, with eval.py's tie
  rule: the engine's temperatures scaled by 1 + 1e-4 flip the examples whose confidence sits on the threshold
  (counted as ties); scaled by 3 they disagree for real, which raises."""
  config, workdir = trained('multi_model')  # never evaluated: temperatures 1
  logits, _, texts = offline(config, workdir)
  first = softmax(np.asarray(logits[0], np.float64)).max(-1)
  threshold = float(np.sort(first)[len(texts) // 2] - 1e-6)  # a hair below one example's confidence
  model = predictor.Predictor(config, workdir, threshold=threshold, tie_tolerance=1e-2)
  engine_temperatures = model.engine.temperatures
  model.engine.temperatures = engine_temperatures * (1 + 1e-4)
  out = model(texts, all_exits=True)
  ones = np.ones(3, np.float32)
  sweep = [np.asarray(x) for x in curves.assign_exits(logits, ones, threshold)]
  warm = [np.asarray(x) for x in curves.assign_exits(logits, ones * (1 + 1e-4), threshold)]
  flips = int(np.sum((sweep[0] != warm[0]) | (sweep[1] != warm[1])))
  assert flips >= 1 and out.engine_ties == flips and model.summary(out)['engine_ties'] == flips
  model.engine.temperatures = engine_temperatures * 3
  with pytest.raises(RuntimeError, match='disagree on .* beyond the tie tolerance'):
    model(texts, all_exits=True)
