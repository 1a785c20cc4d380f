"""A run is exactly what its command says (issue 22): every train.* field, the token lengths, the model and its
constants (by content) are in the run identity; a rerun that differs is refused naming the fields; data moved
to another folder is the same run; constants are checked against the encoder; a damaged checkpoint is only
a missing, truncated or unreadable file, and nothing is deleted. Tiny files the tests write."""

import errno
import hashlib
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import eval as eval_cli
import train as train_cli
from configs import sweet_demo, sweet_papa_demo
from drivers import methods
from papa_jax import averages
from pipeline import checkpoints, fingerprint, train_loop
from tests import test_train_loop as tl
from tests.test_run_safety import damage, files_of, tiny_config
from tests.test_cli import write_task
from tests.script_env import script_env


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished sweet workdir trained 2 epochs (12 steps; checkpoints kept at 9 and 12) and its task."""
  root = write_task(tmp_path_factory.mktemp('identity'))
  config = tiny_config(root)
  config.train.num_epochs = 2
  train_cli.run(config, str(root / 'work'))
  return root


def rerun(root, tmp_path, **train):
  """A copy of the finished workdir and the config of its run with `train` fields changed."""
  work = tmp_path / 'work'
  shutil.copytree(root / 'work', work)
  config = tiny_config(root)
  config.train.num_epochs = 2
  config.train.update(train)
  return work, config


# ------------------------------------------------------------------------------ every train.* field is the run

@pytest.mark.parametrize('field, value, shown', [
    ('learning_rate', 1e-4, 'saved 0.001, now 0.0001'), ('adam_eps', 1e-8, 'saved 1e-06, now 1e-08'),
    ('warmup_fraction', 0.25, 'saved 0.0, now 0.25'), ('weight_decay', 0.01, 'saved 0.0, now 0.01'),
    ('grad_clip', 0.5, 'saved 1.0, now 0.5'), ('exit_weighting', 'linear', 'saved "equal", now "linear"'),
    ('schedule', 'constant', 'saved "linear", now "constant"'), ('seed', 7, 'saved 42, now 7'),
    ('batch_size', 16, 'saved 8, now 16'), ('geometric_ratio', 3.0, 'saved 2.0, now 3.0')])
def test_a_rerun_with_another_train_field_is_refused_naming_it(finished, tmp_path, field, value, shown):
  work, config = rerun(finished, tmp_path, **{field: value})
  before = files_of(work)
  with pytest.raises(fingerprint.FingerprintMismatch,
                     match=rf'(?s)different run:.*train\.{field}: {shown}.*new --workdir'):
    train_cli.run(config, str(work))
  assert files_of(work) == before
  with pytest.raises(fingerprint.FingerprintMismatch, match=rf'train\.{field}: {shown}'):
    eval_cli.run(config, str(work))  # eval scores only the run its command describes
  assert not (work / 'eval').exists()


def test_shortened_epochs_are_refused_and_results_keep_the_steps_trained(finished, tmp_path):
  work, config = rerun(finished, tmp_path, num_epochs=1)
  before = files_of(work)
  with pytest.raises(fingerprint.FingerprintMismatch, match=r'train\.num_epochs: saved 2, now 1'):
    train_cli.run(config, str(work))
  assert files_of(work) == before and json.loads(before['results.json'])['steps'] == 12


def test_speed_and_logging_fields_and_moved_data_are_the_same_run(finished, tmp_path, capsys):
  work, config = rerun(finished, tmp_path, checkpoint_every=5, log_every=1, max_to_keep=4)
  config.eval.batch_size = 8
  moved = tmp_path / 'moved'  # the same bytes in another folder: matched by content, the path is information
  moved.mkdir()
  for name in ('train.csv', 'eval.csv'):
    shutil.copy(finished / name, moved / name)
  config.data.train_path, config.data.eval_path = str(moved / 'train.csv'), str(moved / 'eval.csv')
  before = files_of(work)
  capsys.readouterr()
  again = train_cli.run(config, str(work))
  assert 'already holds this finished run' in capsys.readouterr().out
  assert files_of(work) == before
  assert again['per_exit_accuracy'] == json.loads(before['results.json'])['per_exit_accuracy']


def test_results_record_the_whole_identity_and_the_code(finished):
  results = json.loads((finished / 'work' / 'results.json').read_text())
  train = results['fingerprint']['train']
  assert train['learning_rate'] == 1e-3 and train['num_epochs'] == 2 and train['adam_eps'] == 1e-6
  assert not {'checkpoint_every', 'log_every', 'max_to_keep'} & set(train)
  d = results['fingerprint']['data']
  assert d['max_seq_length'] == 16 and d['length_buckets'] == list(sweet_demo.get_config().data.length_buckets)
  assert results['code']['versions']['jax'] == jax.__version__
  assert len(results['code']['git_commit'] or '') in (0, 40)


def test_eval_outputs_record_the_step_identity_and_code(finished, tmp_path):
  work, config = rerun(finished, tmp_path)
  result = eval_cli.run(config, str(work))
  saved = json.loads((work / 'results.json').read_text())
  for name in ('per_exit_accuracy.json', 'temperatures.json', 'curve.json'):
    out = json.loads((work / 'eval' / name).read_text())
    assert out['checkpoint_step'] == 12, name
    assert out['run_identity'] == saved['fingerprint'], name
    assert out['run_identity_digest'] == fingerprint.digest(saved['fingerprint'])
    assert out['code']['versions'] == saved['code']['versions'], name
  assert result['checkpoint_step'] == 12


# ------------------------------------------------------------------------------ default workdirs

def test_default_workdir_of_a_command_with_overrides_is_its_own():
  plain = sweet_demo.get_config()
  assert fingerprint.default_workdir('configs/sweet_demo.py', plain) == 'runs/sweet_demo'
  lr = sweet_demo.get_config()
  lr.train.learning_rate = 1e-4
  lr_dir = fingerprint.default_workdir('configs/sweet_demo.py', lr)
  assert lr_dir.startswith('runs/sweet_demo-') and lr_dir != 'runs/sweet_demo'
  again = sweet_demo.get_config()
  again.train.learning_rate = 1e-4
  assert fingerprint.default_workdir('configs/sweet_demo.py', again) == lr_dir  # the same command resumes
  other = sweet_demo.get_config()
  other.train.learning_rate = 3e-4
  assert fingerprint.default_workdir('configs/sweet_demo.py', other) not in (lr_dir, 'runs/sweet_demo')
  epochs = sweet_demo.get_config()
  epochs.train.num_epochs = 1
  assert fingerprint.default_workdir('configs/sweet_demo.py', epochs) not in (lr_dir, 'runs/sweet_demo')
  speed = sweet_demo.get_config()  # what changes only speed or logging keeps the plain workdir
  speed.eval.batch_size, speed.train.log_every, speed.train.checkpoint_every = 8, 1, 10
  speed.data.max_eval_samples = 100
  assert fingerprint.default_workdir('configs/sweet_demo.py', speed) == 'runs/sweet_demo'
  assert fingerprint.overridden_fields('configs/sweet_demo.py', lr) == {'train.learning_rate': 1e-4}


# ------------------------------------------------------------------------------ constants

def write_averages(path, layers, heads, length=12, **meta):
  est = averages.AttentionSums.zeros(layers, heads, length, **meta)
  est.sums[:] = np.random.default_rng(layers * 10 + heads).random(est.sums.shape)
  est.counts[:] = 1.0
  averages.save(path, est)
  return est


def constant_config(root, avg):
  config = sweet_papa_demo.get_config()
  config.model.checkpoint, config.model.exit_layers, config.model.constants_path = str(root / 'ckpt'), (1, 2), str(avg)
  return config


def test_constants_for_another_encoder_are_refused_never_clamped(finished, tmp_path):
  write_averages(tmp_path / 'fewer_heads.npz', 2, 2)  # the tiny model has 2 layers x 3 heads
  with pytest.raises(ValueError, match=r'fewer_heads\.npz.*shape \[2, 2, 12, 12\].*2 layers x 3 heads'):
    methods.build(constant_config(finished, tmp_path / 'fewer_heads.npz'), num_labels=2)
  write_averages(tmp_path / 'wider.npz', 2, 3, encoder={'hidden_size': 99, 'num_heads': 3})
  with pytest.raises(ValueError, match=r'hidden_size 99 \(the encoder: 15\)'):
    methods.build(constant_config(finished, tmp_path / 'wider.npz'), num_labels=2)
  write_averages(tmp_path / 'named.npz', 2, 3, model='bert-base-uncased')
  with pytest.raises(ValueError, match=r"estimated for model 'bert-base-uncased'"):
    methods.build(constant_config(finished, tmp_path / 'named.npz'), num_labels=2)
  write_averages(tmp_path / 'fits.npz', 2, 3, model=str(finished / 'ckpt'))
  built = methods.build(constant_config(finished, tmp_path / 'fits.npz'), num_labels=2)
  assert built.constants_record['shape'] == [2, 3, 12, 12] and built.constants_record['model'] == str(finished / 'ckpt')


def test_a_model_trained_with_constants_refuses_changed_ones(finished, tmp_path, capsys):
  avg = tmp_path / 'avg.npz'
  write_averages(avg, 2, 3)
  config = constant_config(finished, avg)
  d, t = config.data, config.train
  d.source, d.train_path, d.eval_path = 'files', str(finished / 'train.csv'), str(finished / 'eval.csv')
  d.max_train_samples, d.calibration_size, d.max_seq_length = 0, 12, 16
  t.batch_size, t.num_epochs, t.learning_rate = 8, 1, 1e-3
  config.eval.batch_size, config.eval.timing_repeats, config.eval.timing_examples = 16, 1, 16
  work = tmp_path / 'work'
  train_cli.run(config, str(work))
  recorded = json.loads((work / 'results.json').read_text())['fingerprint']['model']['constants']
  assert recorded['sha256'] == fingerprint.file_identity(str(avg))['sha256'] and recorded['shape'] == [2, 3, 12, 12]
  moved = tmp_path / 'elsewhere.npz'  # the same constants elsewhere: the same run
  shutil.copy(avg, moved)
  config.model.constants_path = str(moved)
  capsys.readouterr()
  train_cli.run(config, str(work))
  assert 'already holds this finished run' in capsys.readouterr().out
  est = averages.load(avg)  # extended in place, as a later PAPA run used to do: same shape, other content
  est.add(np.ones_like(est.sums), np.ones_like(est.counts), 4)
  averages.save(avg, est)
  config.model.constants_path = str(avg)
  with pytest.raises(fingerprint.FingerprintMismatch, match=r'(?s)model\.constants: saved .*avg\.npz.*sha256'):
    train_cli.run(config, str(work))
  with pytest.raises(fingerprint.FingerprintMismatch, match=r'model\.constants'):
    eval_cli.run(config, str(work))


# ------------------------------------------------------------------------------ damaged checkpoints

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """train_loop on the synthetic tiny method: 10 steps, checkpoints kept at steps 9 and 10."""
  work = tmp_path_factory.mktemp('tiny_identity') / 'work'
  train_loop.train_and_evaluate(tl.config(), str(work), tl.tiny_method(), tl.splits(), tl.encode)
  return work


def _failing_restore(monkeypatch, error):
  """Orbax raises `error` when reading step 10's arrays (its metadata still reads)."""
  real = ocp.CheckpointManager.restore

  def restore(self, step, *args, **kwargs):
    wanted = kwargs.get('args') or (args[0] if args else None)
    if step == 10 and wanted is not None and set(wanted.keys()) - {'meta'}:
      raise error
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', restore)


@pytest.mark.parametrize('error', [OSError(errno.EIO, 'Input/output error'), MemoryError('out of memory'),
                                   ValueError('UNAVAILABLE: Error reading "params.w" (transient)')])
def test_a_transient_restore_error_propagates_and_nothing_moves(tiny_run, tmp_path, monkeypatch, error):
  work = tmp_path / 'work'
  shutil.copytree(tiny_run, work)
  _failing_restore(monkeypatch, error)
  with pytest.raises(type(error)):
    train_loop.train_and_evaluate(tl.config(), str(work), tl.tiny_method(), tl.splits(), tl.encode)
  with pytest.raises(type(error)):
    train_loop.restore_params(tl.config(), str(work), tl.tiny_method())
  assert sorted(p.name for p in (work / 'checkpoints').iterdir()) == ['10', '9']


def test_damaged_optimizer_state_costs_eval_nothing_and_training_moves_the_step_aside(tiny_run, tmp_path, caplog):
  work = tmp_path / 'work'
  shutil.copytree(tiny_run, work)
  damage(work, 10, item='train')  # the optimizer state only: the parameters are intact
  method = tl.tiny_method()
  restored = train_loop.restore(tl.config(), str(work), method)
  assert restored.step == 10 and not restored.damaged
  for a, b in zip(*(map(np.asarray, jax.tree.leaves(x)) for x in (
      restored.state, train_loop.restore_params(tl.config(), str(tiny_run), method)))):
    np.testing.assert_array_equal(a, b)
  with caplog.at_level(logging.WARNING):
    train_loop.train_and_evaluate(tl.config(), str(work), method, tl.splits(), tl.encode)
  kept = work / 'checkpoints' / '10.damaged-1'
  assert kept.is_dir() and any(kept.rglob('*'))  # moved aside with its files, not deleted
  assert any('step 10' in r.getMessage() and str(kept) in r.getMessage() for r in caplog.records)
  assert checkpoints.Checkpointer(str(work), read_only=True).latest_step() == 10  # retrained and saved again


def test_is_damage_reads_the_cause_chain():
  wrapped = Exception('Encountered error while reading array index')
  wrapped.__cause__ = ValueError('OUT_OF_RANGE: Error reading "params.w/0.0": Requested byte range [0, 4719)')
  assert checkpoints.is_damage(wrapped)
  assert checkpoints.is_damage(FileNotFoundError('params/_METADATA'))
  transient = Exception('Encountered error while reading array index')
  transient.__cause__ = ValueError('UNAVAILABLE: Error reading "params.w/0.0"')
  assert not checkpoints.is_damage(transient)
  assert not checkpoints.is_damage(MemoryError()) and not checkpoints.is_damage(OSError(errno.EIO, 'I/O'))


# ------------------------------------------------------------------------------ configuration holes

def test_max_seq_length_above_the_position_table_is_refused(finished, tmp_path):
  config = tiny_config(finished, train_path=str(tmp_path / 'absent.csv'), max_seq_length=21)  # 20 positions
  with pytest.raises(ValueError, match=r'data\.max_seq_length 21 exceeds the position table .* \(20 tokens\)'):
    train_cli.run(config, str(tmp_path / 'work'))
  config.data.max_seq_length = 20  # the whole table is allowed: then the data is read
  with pytest.raises(Exception, match='absent.csv'):
    train_cli.run(config, str(tmp_path / 'work'))


def test_pair_length_is_what_the_tokenizers_special_tokens_need(finished, tmp_path):
  import transformers
  from tests.test_tokenizer_families import CORPUS, SPECIALS
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  ckpt = tmp_path / 'roberta_ckpt'
  shutil.copytree(finished / 'ckpt', ckpt)
  for name in ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
    (ckpt / name).unlink(missing_ok=True)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in json.loads(tok.to_str())['model']['merges']]
  transformers.RobertaTokenizerFast(vocab=tok.get_vocab(), merges=merges).save_pretrained(str(ckpt))
  config = tiny_config(finished, train_path=str(tmp_path / 'absent.csv'), text_fields=('a', 'b'), max_seq_length=5)
  config.model.checkpoint = str(ckpt)  # <s> a </s></s> b </s>: 4 special tokens, so 6, where BERT needs 5
  with pytest.raises(ValueError, match=r'data\.max_seq_length must be a whole number >= 6 .*4 special tokens.*got 5'):
    train_cli.run(config, str(tmp_path / 'work'))
  config.model.checkpoint = str(finished / 'ckpt')  # BERT's [CLS] a [SEP] b [SEP]: 5 is enough
  with pytest.raises(Exception, match='absent.csv'):
    train_cli.run(config, str(tmp_path / 'work'))


# ------------------------------------------------------------------------------ PAPA's averages, predict's record

def test_a_papa_run_never_changes_an_averages_file_in_place(finished, tmp_path):
  from configs import papa_demo
  from drivers import papa_experiment, papa_setup
  config = papa_demo.get_config()
  config.model.checkpoint = str(finished / 'ckpt')
  d = config.data
  d.source, d.train_path, d.eval_path = 'files', str(finished / 'train.csv'), str(finished / 'eval.csv')
  d.max_train_samples = d.max_eval_samples = 0
  config.papa.length, config.papa.estimate_max_examples, config.papa.eval_batch_size = 12, 16, 16
  s = papa_setup._setup(config, tmp_path / 'work')
  papa_experiment.estimate(s)
  path = tmp_path / 'work' / 'papa' / 'averages.npz'
  first = path.read_bytes()
  assert averages.load(path).encoder == averages.model_identity(s.enc_config)  # what it was estimated for
  config.papa.estimate_max_examples = 32  # a later run extends the estimate
  assert papa_experiment.estimate(s).num_examples == 32
  digest = hashlib.sha256(first).hexdigest()
  kept = path.with_name(f'averages-{digest[:12]}.npz')
  assert kept.read_bytes() == first  # the 16-example file a model may use, byte for byte, under its digest
  assert averages.load(path).num_examples == 32


def test_predict_records_the_step_and_run_identity(trained, tmp_path):
  import subprocess
  import sys
  config, workdir = trained('multi_model')
  (tmp_path / 'config.py').write_text(
      'import pathlib\nfrom tests import trained_workdirs\n\n\ndef get_config():\n'
      f'  return trained_workdirs.config_for(pathlib.Path({str(trained.root)!r}), "multi_model")\n')
  (tmp_path / 'in.txt').write_text('good film\na dull plot\n')
  root = pathlib.Path(__file__).resolve().parents[1]
  env = script_env()
  done = subprocess.run([sys.executable, 'predict.py', '--config', str(tmp_path / 'config.py'), '--workdir', workdir,
                         '--input', str(tmp_path / 'in.txt'), '--output', str(tmp_path / 'out.jsonl'),
                         '--threshold', '0.7'], cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / 'out.jsonl.run.json').read_text())
  meta = checkpoints.Checkpointer(workdir, read_only=True).manager.restore(
      1, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  assert record['checkpoint_step'] == 1 and record['run_identity'] == meta.get('fingerprint')
  assert record['threshold'] == 0.7 and record['code']['versions']['jax']
  assert f'checkpoint step 1, run identity {record["run_identity_digest"]}' in done.stderr
  assert len((tmp_path / 'out.jsonl').read_text().splitlines()) == 2  # one row per input, nothing added


def test_checkpoints_of_the_one_item_layout_still_restore(tiny_run, tmp_path):
  """Workdirs saved before params and optimizer state were split ('state' item) resume and evaluate."""
  method = tl.tiny_method()
  new = train_loop.restore(tl.config(), str(tiny_run), method)
  full = checkpoints.Checkpointer(str(tiny_run), read_only=True)
  tx = train_loop.make_optimizer(tl.config().train, 10, param_groups=method.param_groups)
  template = {'params': new.state, 'opt_state': tx.init(new.state), 'step': np.zeros((), np.int32)}
  state = full.restore_newest(checkpoints.abstract(template)).state
  full.close()
  old = checkpoints.Checkpointer(str(tmp_path / 'old'))
  old.manager.save(10, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(new.meta)))
  old.close()
  assert (tmp_path / 'old' / 'checkpoints' / '10' / 'state').is_dir()
  params = train_loop.restore(tl.config(), str(tmp_path / 'old'), method)
  reread = checkpoints.Checkpointer(str(tmp_path / 'old'), read_only=True).restore_newest(checkpoints.abstract(template))
  for a, b in zip(jax.tree.leaves((params.state, state)), jax.tree.leaves(
      (new.state, reread.state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predict_and_export_load_only_the_run_their_config_describes(finished, tmp_path):
  from drivers import predictor
  work, config = rerun(finished, tmp_path)
  loaded = predictor.load_trained(config, str(work))
  assert loaded.record['checkpoint_step'] == 12
  assert loaded.record['run_identity'] == json.loads((work / 'results.json').read_text())['fingerprint']
  config.train.learning_rate = 1e-4
  with pytest.raises(fingerprint.FingerprintMismatch, match=r'train\.learning_rate: saved 0\.001, now 0\.0001'):
    predictor.load_trained(config, str(work))
