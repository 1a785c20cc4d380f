"""The study runners' machinery (experiments/common.py and the runners' cell grids): the skip-done logic with
a fake cell runner, provenance across --redo, the code version, cell selection, sequence lengths, that every
cell's command-line overrides parse against its config file, and what extract keeps of a cell's outputs."""

import json
import os
import subprocess

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from experiments import common, exit_study, gradient_conflict, papa_study, sweet_study_a, token_lengths


def _fake_runner(calls, fail=()):
  def runner(step, workdir, log_path):
    calls.append((os.path.basename(workdir), step.name))
    if os.path.basename(workdir) in fail:
      return 1, 'Traceback: boom'
    path = os.path.join(workdir, step.done_file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'step': step.name}, f)
    return 0, ''
  return runner


def _cells(root, names):
  return [common.Cell(n, str(root / n), (common.Step('train', ('train.py',), 'results.json'),
                                         common.Step('eval', ('eval.py',), 'eval/curve.json')), {'seed': i})
          for i, n in enumerate(names)]


def test_run_cells_skips_done_cells_and_steps_and_records_failures(tmp_path):
  study, work = tmp_path / 'study', tmp_path / 'work'
  cells = _cells(work, ['a', 'b', 'c'])
  extract = lambda cell: {'value': cell.labels['seed']}
  # Cell b's training finished in an earlier sitting: only its eval runs.
  (work / 'b').mkdir(parents=True)
  (work / 'b' / 'results.json').write_text('{}')
  calls = []
  out = common.run_cells(cells, str(study), extract, runner=_fake_runner(calls, fail=('c',)))
  assert calls == [('a', 'train'), ('a', 'eval'), ('b', 'eval'), ('c', 'train')]
  assert out.ran == ['a', 'b'] and list(out.failed) == ['c'] and out.skipped == []
  assert 'boom' in json.loads((study / 'failures.json').read_text())['c']
  record = json.loads((study / 'runs' / 'b.json').read_text())
  assert record['value'] == 1 and record['labels'] == {'seed': 1} and set(record['wall_s']) == {'eval'}
  assert record['commands'] == ['python train.py', 'python eval.py'] and 'cpu' in record['machine']
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=common.ROOT, capture_output=True, text=True).stdout.strip()
  assert record['code']['commit'] == head  # the code version each number came from
  # Second sitting: a and b are done (their raw JSON exists) and are not run again; c is retried and now works.
  calls.clear()
  out = common.run_cells(cells, str(study), extract, runner=_fake_runner(calls))
  assert calls == [('c', 'train'), ('c', 'eval')]
  assert out.skipped == ['a', 'b'] and out.ran == ['c']
  assert json.loads((study / 'failures.json').read_text()) == {}
  assert [r['cell'] for r in common.load_runs(str(study))] == ['a', 'b', 'c']
  # A step that exits 0 without writing its done-file is a failure too.
  calls.clear()
  bad = _cells(work, ['d'])
  out = common.run_cells(bad, str(study), extract, runner=lambda s, w, l: (0, ''))
  assert list(out.failed) == ['d'] and not (study / 'runs' / 'd.json').exists()
  # --redo=eval on a done cell: only its eval runs again; the new record keeps train's earlier wall time.
  calls.clear()
  common.write_json(str(study / 'runs' / 'a.json'), dict(json.loads((study / 'runs' / 'a.json').read_text()),
                                                       wall_s={'train': 123.0, 'eval': 9.0}))
  out = common.run_cells(cells[:1], str(study), extract, runner=_fake_runner(calls), redo=['eval'])
  assert calls == [('a', 'eval')] and out.ran == ['a']
  assert json.loads((study / 'runs' / 'a.json').read_text())['wall_s'] == {'train': 123.0, 'eval': 0.0}
  with pytest.raises(ValueError, match='no step'):
    common.run_cells(cells[:1], str(study), extract, runner=_fake_runner(calls), redo=['evaluate'])
  with pytest.raises(ValueError, match='Duplicate'):
    common.run_cells(_cells(work, ['a', 'a']), str(study), extract, runner=_fake_runner([]))


def test_provenance_survives_redo_and_attachments_are_copied(tmp_path, monkeypatch):
  study, work = tmp_path / 'study', tmp_path / 'work'
  cells = _cells(work, ['a'])
  (tmp_path / 'p.npz').write_bytes(b'outputs')
  extract = lambda cell: {'value': 1, common.ATTACH: {'.predictions.npz': str(tmp_path / 'p.npz')}}
  commit = {'now': 'trained-here'}
  monkeypatch.setattr(common, 'code_version', lambda root=common.ROOT: {'commit': commit['now'], 'dirty': False})
  common.run_cells(cells, str(study), extract, runner=_fake_runner([]))
  first = json.loads((study / 'runs' / 'a.json').read_text())
  assert first['code']['commit'] == 'trained-here' and first['redone'] == [] and common.ATTACH not in first
  assert first['versions']['jax'] not in ('', 'not installed') and 'python' in first['versions']
  assert (study / 'runs' / 'a.predictions.npz').read_bytes() == b'outputs'
  # Two re-timings on later commits: the training commit stays, each re-timing is appended with its own.
  for later in ('retimed-1', 'retimed-2'):
    commit['now'] = later
    common.run_cells(cells, str(study), extract, runner=_fake_runner([]), redo=['eval'])
  record = json.loads((study / 'runs' / 'a.json').read_text())
  assert record['code']['commit'] == 'trained-here' and record['versions'] == first['versions']
  assert [(r['code']['commit'], r['steps']) for r in record['redone']] == [('retimed-1', ['eval']),
                                                                            ('retimed-2', ['eval'])]
  assert record['redone'][0]['when'].endswith('Z') and 'jax' in record['redone'][0]['versions']
  # Retraining (the first step redone) starts the provenance afresh.
  commit['now'] = 'retrained'
  common.run_cells(cells, str(study), extract, runner=_fake_runner([]), redo=['train', 'eval'])
  record = json.loads((study / 'runs' / 'a.json').read_text())
  assert record['code']['commit'] == 'retrained' and record['redone'] == []
  # A redo of eval in a workdir that lost its training output retrains it: recorded as a retraining.
  os.remove(os.path.join(cells[0].workdir, cells[0].steps[0].done_file))
  commit['now'] = 'retrained-again'
  common.run_cells(cells, str(study), extract, runner=_fake_runner([]), redo=['eval'])
  record = json.loads((study / 'runs' / 'a.json').read_text())
  assert record['code']['commit'] == 'retrained-again' and record['redone'] == []


def test_code_version_ignores_the_studies_own_outputs(tmp_path):
  git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=tmp_path,
                                  check=True, capture_output=True, text=True).stdout.strip()
  git('init', '-q')
  (tmp_path / 'docs' / 'results').mkdir(parents=True)
  (tmp_path / 'docs' / 'results' / 'README.md').write_text('report\n')
  (tmp_path / 'train.py').write_text('code\n')
  git('add', '-A')
  git('commit', '-qm', 'c')
  (tmp_path / 'docs' / 'results' / 'README.md').write_text('rewritten by a running study\n')
  (tmp_path / 'new_untracked.py').write_text('x\n')
  assert common.code_version(str(tmp_path)) == {'commit': git('rev-parse', 'HEAD'), 'dirty': False}
  (tmp_path / 'train.py').write_text('edited code\n')
  assert common.code_version(str(tmp_path))['dirty'] is True
  assert common.code_version('/')['commit'] == 'unknown'


def test_select_cells_orders_by_pattern_and_refuses_unknown_patterns(tmp_path):
  cells = _cells(tmp_path, ['mr_sweet_s42', 'mr_ee_s42', 'mr_sweet_s43', 'mr_ee_s43', 'tw_sweet_s42'])
  names = lambda cs: [c.name for c in cs]
  assert names(common.select_cells(cells, [])) == names(cells)
  assert names(common.select_cells(cells, ['*_s43', 'mr_ee_*', 'tw_*'])) == [
      'mr_sweet_s43', 'mr_ee_s43', 'mr_ee_s42', 'tw_sweet_s42']  # pattern order first, each cell once
  with pytest.raises(ValueError, match='matches no cell'):
    common.select_cells(cells, ['mr_*', 'movie_*'])


def test_length_from_counts_by_hand():
  buckets = (32, 64, 128)
  # 99th percentile of 1..100 (linear interpolation) is 99.01 -> 100 tokens -> bucket 128.
  assert token_lengths.length_from_counts(list(range(1, 101)), quantile=99, buckets=buckets, cap=512) == 128
  assert token_lengths.length_from_counts(list(range(1, 101)), quantile=99, buckets=buckets, cap=64) == 64
  # One outlier in 100: the percentile sits at 10 + 0.01 * 190 = 11.9 -> 12 tokens -> bucket 32.
  assert token_lengths.length_from_counts([10] * 99 + [200], quantile=99, buckets=buckets, cap=512) == 32
  # The maximum, 200 tokens, fits no bucket: the cap.
  assert token_lengths.length_from_counts([10] * 99 + [200], quantile=100, buckets=buckets, cap=512) == 512
  with pytest.raises(ValueError, match='empty'):
    token_lengths.length_from_counts([], quantile=99, buckets=buckets, cap=512)


def test_choose_seq_length_caps_and_counts_the_truncated(tmp_path):
  # Words of 'a' are one MiniLM token each: n words + [CLS] + [SEP] = n + 2 tokens.
  words = [3] * 60 + [40] * 30 + [100] * 10
  rows = [{'text': ' '.join(['a'] * n), 'label': i % 2} for i, n in enumerate(words)]
  (tmp_path / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (tmp_path / 'eval.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows[:2]))
  fields = {'source': 'files', 'train_path': str(tmp_path / 'train.jsonl'), 'eval_path': str(tmp_path / 'eval.jsonl'),
            'calibration_size': 0, 'length_buckets': (16, 32, 64, 128)}
  cache = str(tmp_path / 'lengths.json')
  assert token_lengths.choose_seq_length(cache, 'minilm', fields) == 128  # 99th percentile 102 tokens
  assert token_lengths.choose_seq_length(cache, 'minilm', fields, max_length=32) == 32
  entry = common.read_json(cache)['minilm/files']
  assert entry['truncated'] == 0.4 and entry['percentiles']['50'] == 5  # 40 of 100 rows exceed 32 tokens
  assert token_lengths.lengths_line(cache).endswith('capped at 32: 40% of examples truncated)')
  assert token_lengths.choose_seq_length(cache, 'minilm', fields) == 128  # another cap: chosen again


def _parse(argv):
  """The config a train.py command line gives (absl + ml_collections, as train.py parses it)."""
  fv = flags.FlagValues()
  # ml_collections defines the --config.x flags from the argv it is given (sys.argv by default).
  full = ['train.py', *argv[1:]]
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=full)
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=fv)
  fv(full)
  return fv.config


def test_cell_commands_parse_against_their_configs(tmp_path):
  grid = sweet_study_a.cells(sweet_study_a.CONFIGS, {'movie_reviews': 64, 'tweets': 32}, movie_seeds=3,
                             tweet_seeds=1, work_root='runs/x')
  assert len(grid) == 15 and len({c.name for c in grid}) == 15
  cell = next(c for c in grid if c.name == 'tweets_mean_multi_model_s42')
  cfg = _parse(cell.steps[0].argv)
  assert cfg.method == 'multi_model' and tuple(cfg.model.exit_layers) == (1, 2, 4, 6)
  assert cfg.data.source == 'tweets' and cfg.data.max_seq_length == 32 and cfg.data.max_eval_samples == 2000
  assert tuple(cfg.eval.thresholds) == exit_study.eval_thresholds(3) and cfg.eval.timing_repeats == 5
  assert cell.steps[1].argv[1:] == cell.steps[0].argv[1:]  # eval sees the same config
  cls = [c for c in grid if c.labels['pooling'] == 'cls']
  assert len(cls) == 3 and all(_parse(c.steps[0].argv).model.pooling == 'cls' for c in cls)
  analysis = gradient_conflict.analysis_cell('minilm', grid[1])
  assert analysis.workdir == grid[1].workdir and _parse(analysis.steps[0].argv).analysis.gradient_conflict
  lengths = {('minilm', 'movie_reviews'): 64, ('minilm', 'tweets'): 64, ('minilm', 'bbc_news'): 128}
  papa = papa_study.cells({'minilm': 'minilm'}, {'minilm': 72}, lengths, seeds=3, work_root='w')
  assert len(papa) == 9
  cfg = _parse(papa[1].steps[0].argv)
  assert tuple(cfg.papa.ks) == (0, 9, 18, 36, 54, 72) and cfg.train.seed == 43 and cfg.papa.length == 64
  cfg = _parse(papa[6].steps[0].argv)
  assert cfg.data.source == 'bbc_news' and cfg.papa.length == cfg.data.max_seq_length == 128


def test_extract_keeps_only_the_fields_the_tables_need(tmp_path, monkeypatch):
  work = tmp_path / 'cell'
  common.write_json(str(work / 'results.json'), {
      'method': 'sweet', 'seed': 42, 'exit_layers': [1, 2], 'per_exit_accuracy': [0.6, 0.7], 'num_examples': 20,
      'num_train_examples': 48, 'steps': 6, 'train_time_s': 3.5, 'config': {'big': 'x' * 1000}})
  point = {'threshold': 0.5, 'accuracy': 0.7, 'layer_fraction': 0.75, 'flops_fraction': 0.8, 'measured_speedup': 1.2,
           'measured_speedups': [1.1, 1.2, 1.3], 'exit_counts': [5, 15], 'engine_agreement': 1.0}
  common.write_json(str(work / 'eval' / 'curve.json'), {'device': 'cpu x1', 'timing_repeats': 1, 'points': [point]})
  out = exit_study.extract(common.Cell('c', str(work), (common.Step('train', ('train.py',), 'results.json'),), {}))
  assert out['per_exit_accuracy'] == [0.6, 0.7] and out['eval_examples'] == 20 and 'config' not in out
  assert out['curve']['points'] == [{'threshold': 0.5, 'accuracy': 0.7, 'layer_fraction': 0.75, 'flops_fraction': 0.8,
                                     'measured_speedup': 1.2, 'measured_speedups': [1.1, 1.2, 1.3]}]
  assert out['curve']['device'] == 'cpu x1' and out['curve']['timing_repeats'] == 1

  from papa_jax import averages
  monkeypatch.setattr(common, 'RESULTS_ROOT', str(tmp_path / 'results'))
  papa_dir = tmp_path / 'papa_cell' / 'papa'
  est = averages.AttentionSums.zeros(2, 3, 12)
  est.sums[:] = np.random.default_rng(0).random(est.sums.shape)
  est.counts[:] = 1.0
  papa_dir.mkdir(parents=True)
  averages.save(papa_dir / 'averages.npz', est)
  rows = [{'k': 0, 'label': '0', 'num_constant_heads': 0, 'fraction_constant': 0.0, 'accuracy': 0.8,
           'relative_drop': 0.0, 'best_accuracy': 0.85}]
  common.write_json(str(papa_dir / 'results.json'), {
      'model': 'tiny', 'length': 12, 'num_heads': 6, 'baseline_accuracy': 0.8, 'results': rows,
      'data': {'num_eval': 13, 'num_train': 40}, 'slot_coverage': {'big': list(range(100))}})
  cell = common.Cell('p', str(tmp_path / 'papa_cell'), (common.Step('papa', ('train.py',), 'papa/results.json'),),
                     {'model': 'tiny', 'task': 'movie_reviews', 'seed': papa_study.SEEDS[0]})
  out = papa_study.extract(cell)
  assert out['results'] == [{k: v for k, v in rows[0].items() if k not in ('label', 'best_accuracy')}]
  assert out['eval_examples'] == 13 and 'slot_coverage' not in out
  assert out['constants_summary']['query_slots'] == [1, 10]  # L = 12: rows 1..10 have a next slot
  assert (tmp_path / 'results' / papa_study.STUDY / 'constants_tiny_movie_reviews.png').stat().st_size > 0
