"""What every study runner shares: cells, the resumable loop that runs them, provenance, the machine.

A study is a list of cells (one training run and its evaluation, or one PAPA experiment). Each cell is a
few steps, each a command line of this repository's programs (`python train.py ...`, `python eval.py ...`)
with the file whose presence means the step finished. Cells run as subprocesses, not in-process:
- a failure (a diverged loss, an out-of-memory kill, a bug in one configuration) ends that process only;
  the study records it and goes on with the next cell;
- every cell starts with fresh memory and jit caches (a study of dozens of cells in one process would
  accumulate compiled programs and device buffers of every model it met);
- the recorded command is exactly what a reader reruns by hand to check one number; train.py's own
  resume (Orbax checkpoints, SIGINT saves) works unchanged.
The cost, ~10-20 s of imports and model loading per step, is small against minutes per cell.

Resumption: a cell is done when its small raw JSON exists under docs/results/<study>/runs/<cell>.json (what
the tables read); it is then skipped. Within an unfinished cell a step is skipped when its done-file exists
in the workdir (e.g. results.json after training), and train.py itself resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_ROOT = os.path.join(ROOT, 'docs', 'results')
WORK_ROOT = os.path.join(ROOT, 'runs', 'studies')


@dataclasses.dataclass(frozen=True)
class Step:
  """One program run of a cell: argv after `python`, and the file (relative to the cell's workdir) whose
  presence means it finished."""
  name: str
  argv: tuple[str, ...]
  done_file: str

  def command(self) -> str:
    return 'python ' + ' '.join(shlex.quote(a) for a in self.argv)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of a study's grid. name: unique in the study (the raw JSON's file name); labels: what the
  tables group by (task, method, seed, ...), copied into the raw JSON."""
  name: str
  workdir: str
  steps: tuple[Step, ...]
  labels: Mapping[str, Any]

  def __post_init__(self):
    if not self.name or '/' in self.name or self.name.startswith('.'):
      raise ValueError(f'Cell name {self.name!r} must be a plain file name.')
    if not self.steps:
      raise ValueError(f'Cell {self.name} has no steps.')


def write_json(path: str, obj: Any) -> None:
  """Atomic write (temp file + rename). Not pipeline.reporting.write_json: that asks jax which process
  writes, and the runner must not initialise a jax backend (on a GPU it would reserve the cells' memory)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def accelerator() -> str:
  """$STUDY_ACCELERATOR, else the NVIDIA GPUs nvidia-smi names, else ''. Asked outside jax on purpose: the
  runner must not initialise a backend (see write_json)."""
  if os.environ.get('STUDY_ACCELERATOR'):
    return os.environ['STUDY_ACCELERATOR']
  if shutil.which('nvidia-smi') is None:
    return ''
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], capture_output=True,
                         text=True, timeout=30).stdout.split('\n')
  except (OSError, subprocess.SubprocessError):
    return ''
  names = [n.strip() for n in out if n.strip()]
  return f'{len(names)} x {names[0]}' if names else ''


def code_version(root: str = ROOT) -> dict[str, Any]:
  """The git commit the cell ran on, and whether tracked files outside docs/results differed from it
  ('unknown' outside git), so that a number can be traced to the code that produced it. docs/results is left
  out: the studies themselves rewrite the committed reports there while they run."""
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True,
                            timeout=30, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.',
                            f':!{os.path.relpath(RESULTS_ROOT, ROOT)}'], cwd=root, capture_output=True,
                           text=True, timeout=30, check=True).stdout.strip() != ''
  except (OSError, subprocess.SubprocessError):
    return {'commit': 'unknown', 'dirty': None}
  return {'commit': commit, 'dirty': dirty}


def machine() -> dict[str, Any]:
  """The CPU model (bench.machine), its core count, the accelerator and the platform, recorded with every
  cell."""
  from bench import machine as bench_machine
  return {'cpu': bench_machine.cpu_model(), 'cpu_count': os.cpu_count(), 'platform': platform.platform(),
          'accelerator': accelerator()}


def run_subprocess(step: Step, workdir: str, log_path: str) -> tuple[int, str]:
  """Runs one step from the repository root with this Python; stdout and stderr go to log_path.
  Returns (exit status, the log's last 2,000 characters)."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'w') as log:
    log.write(f'$ {step.command()}\n')
    log.flush()
    rc = subprocess.run([sys.executable, *step.argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
  with open(log_path) as f:
    return rc, f.read()[-2000:]


Runner = Callable[[Step, str, str], tuple[int, str]]
Extract = Callable[[Cell], dict[str, Any]]


@dataclasses.dataclass
class Outcome:
  """What one sitting did: cells skipped (done before), run now, failed (with their error tails)."""
  skipped: list[str] = dataclasses.field(default_factory=list)
  ran: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    return (f'{len(self.skipped)} cells done before, {len(self.ran)} run now, {len(self.failed)} failed'
            + (f': {sorted(self.failed)}' if self.failed else ''))


def raw_path(study_dir: str, cell: Cell) -> str:
  return os.path.join(study_dir, 'runs', f'{cell.name}.json')


# An extract may return {ATTACH: {suffix: source path}}: files the runner copies beside the raw JSON, as
# runs/<cell><suffix> (e.g. '.predictions.npz', the per-example outputs paired tests read).
ATTACH = '_attach'


def attachment_path(study_dir: str, cell: Cell | str, suffix: str) -> str:
  name = cell if isinstance(cell, str) else cell.name
  return os.path.join(study_dir, 'runs', f'{name}{suffix}')


LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'tokenizers', 'transformers',
             'safetensors')


def versions() -> dict[str, str]:
  """Python's and the libraries' versions (package metadata: importing jax would start a backend)."""
  from importlib import metadata
  out = {'python': platform.python_version()}
  for name in LIBRARIES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = 'not installed'
  return out


def provenance(cell: Cell, study_dir: str, redo: Sequence[str]) -> dict[str, Any]:
  """The raw JSON's provenance fields: code (commit the cell trained on, i.e. ran its first step on),
  versions, and redone (one entry per later sitting that reran some steps: its steps, commit, versions, time).
  A redo that keeps the first step (re-timing, re-scoring) keeps the training commit and versions and appends
  an entry; one that reruns the first step retrains, and the provenance starts afresh."""
  now = {'code': code_version(), 'versions': versions()}
  if not redo or cell.steps[0].name in redo:
    return dict(now, redone=[])
  before = read_json(raw_path(study_dir, cell))
  entry = dict(now, steps=list(redo), when=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
  return {'code': before.get('code', {'commit': 'unknown', 'dirty': None}),
          'versions': before.get('versions', 'not recorded'), 'redone': [*before.get('redone', []), entry]}


def run_cells(cells: Sequence[Cell], study_dir: str, extract: Extract, *, runner: Runner = run_subprocess,
              dry_run: bool = False, redo: Sequence[str] = ()) -> Outcome:
  """Runs every cell whose raw JSON is not in study_dir/runs, step by step (a step whose done-file exists is
  skipped), then writes the raw JSON: extract(cell) plus the cell's labels, commands, wall time per step
  and machine. A failed step is recorded in study_dir/failures.json and the study goes on; a later sitting
  retries it. dry_run prints the commands of the cells still to do and runs nothing.

  redo: step names to run again in cells already done (e.g. 'eval', to re-time a speedup measured while
  another job held the cores); their done-files are removed first, and the new raw JSON keeps the earlier
  wall times of the steps not rerun. Provenance (see `provenance`) follows the steps that actually ran: a redo
  of 'eval' in a workdir whose training output is gone retrains, and is recorded as a retraining."""
  names = [c.name for c in cells]
  if len(set(names)) != len(names):
    raise ValueError(f'Duplicate cell names: {sorted({n for n in names if names.count(n) > 1})}.')
  out = Outcome()
  failures_path = os.path.join(study_dir, 'failures.json')
  failures = read_json(failures_path) if os.path.exists(failures_path) else {}
  for i, cell in enumerate(cells):
    done_before = os.path.exists(raw_path(study_dir, cell))
    if done_before and not redo:
      out.skipped.append(cell.name)
      continue
    print(f'[{time.strftime("%H:%M:%S")}] cell {i + 1}/{len(cells)}: {cell.name}', flush=True)
    if dry_run:
      for step in cell.steps:
        print('  ' + step.command())
      continue
    wall = _redo(cell, study_dir, redo) if done_before else {}
    error, ran = None, []
    for step in cell.steps:
      if os.path.exists(os.path.join(cell.workdir, step.done_file)):
        continue
      ran.append(step.name)  # what provenance records: a workdir that lost a step's output reruns it too
      t0 = time.time()
      rc, tail = runner(step, cell.workdir, os.path.join(cell.workdir, 'logs', f'{step.name}.log'))
      wall[step.name] = round(time.time() - t0, 1)
      if rc != 0 or not os.path.exists(os.path.join(cell.workdir, step.done_file)):
        error = f'{step.name} exited with status {rc}: {tail}'
        break
    if error is None:
      try:
        extracted = extract(cell)
      except Exception as e:  # a malformed output file is this cell's failure, not the study's
        error = f'extract: {type(e).__name__}: {e}'
    if error is not None:
      print(f'  FAILED: {error[-500:]}', flush=True)
      out.failed[cell.name] = failures[cell.name] = error
      write_json(failures_path, failures)
      continue
    attach = extracted.pop(ATTACH, {})
    record = dict(extracted, labels=dict(cell.labels), commands=[s.command() for s in cell.steps],
                  wall_s=wall, machine=machine(), **provenance(cell, study_dir, ran if done_before else ()))
    os.makedirs(os.path.join(study_dir, 'runs'), exist_ok=True)
    for suffix, src in attach.items():  # before the raw JSON: its presence means the cell is done
      shutil.copyfile(src, attachment_path(study_dir, cell, suffix))
    write_json(raw_path(study_dir, cell), record)
    if failures.pop(cell.name, None) is not None:
      write_json(failures_path, failures)
    out.ran.append(cell.name)
  return out


def select_cells(cells: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
  """The cells whose names match the fnmatch patterns, in the order of the patterns (then the grid's), each
  once; every cell when there are no patterns. A pattern that matches no cell is an error (a typo would
  otherwise silently run nothing)."""
  if not patterns:
    return list(cells)
  out, seen = [], set()
  for pattern in patterns:
    matched = [c for c in cells if fnmatch.fnmatchcase(c.name, pattern)]
    if not matched:
      raise ValueError(f'--cells: {pattern!r} matches no cell of this study; cells: {[c.name for c in cells]}.')
    out += [c for c in matched if c.name not in seen]
    seen.update(c.name for c in matched)
  return out


def _redo(cell: Cell, study_dir: str, redo: Sequence[str]) -> dict[str, float]:
  """Prepares a done cell for running the `redo` steps again: removes their done-files and returns the
  recorded wall times of its other steps (kept in the new raw JSON)."""
  unknown = set(redo) - {s.name for s in cell.steps}
  if unknown:
    raise ValueError(f'--redo: cell {cell.name} has no step {sorted(unknown)}; its steps: '
                     f'{[s.name for s in cell.steps]}.')
  for step in cell.steps:
    done = os.path.join(cell.workdir, step.done_file)
    if step.name in redo and os.path.exists(done):
      os.remove(done)
  return {k: v for k, v in read_json(raw_path(study_dir, cell)).get('wall_s', {}).items() if k not in redo}


def study_main(f, study_dir: str, make_cells: Callable[[], Sequence[Cell]], extract: Extract,
               write_report: Callable[[], str]) -> None:
  """What every runner's main does with the common flags (f = absl's FLAGS): run the missing cells (only
  those --cells selects, in its order), or print them with --dry_run; then write and print the report (of
  every run on disk); --report_only only writes the report."""
  if not f.report_only:
    cells = select_cells(make_cells(), f.cells)
    print(run_cells(cells, study_dir, extract, dry_run=f.dry_run, redo=f.redo).summary(), flush=True)
    if f.dry_run:
      return
  print(write_report())


def load_runs(study_dir: str) -> list[dict[str, Any]]:
  """Every raw per-cell JSON of a study (sorted by file name), with 'cell' (its name) and 'attachments' (suffix ->
  path of each file copied beside it, e.g. '.predictions.npz')."""
  runs_dir = os.path.join(study_dir, 'runs')
  if not os.path.isdir(runs_dir):
    return []
  names = sorted(os.listdir(runs_dir))
  out = []
  for n in names:
    if n.endswith('.json'):
      cell = n[:-5]
      attached = {m[len(cell):]: os.path.join(runs_dir, m) for m in names
                  if m.startswith(cell + '.') and not m.endswith('.json')}
      out.append(dict(read_json(os.path.join(runs_dir, n)), cell=cell, attachments=attached))
  return out


def define_flags(study: str, *, work_root: bool = True) -> None:
  """The flags every runner has (defined when it runs as a program, so that runners import each other
  without defining a flag twice)."""
  from absl import flags
  flags.DEFINE_bool('report_only', False, 'Only aggregate the runs on disk: tables, figures, README.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands of the cells still to do; run nothing.')
  flags.DEFINE_list('redo', [], 'Steps to run again in cells already done (e.g. "eval" with --cells, to '
                    're-time speedups measured while another job held the cores).')
  flags.DEFINE_list('cells', [], 'Only the cells whose names match these fnmatch patterns, run in the order '
                    'of the patterns (e.g. "*_s42,*_s43"); default: the whole grid in its order.')
  if work_root:
    flags.DEFINE_string('work_root', os.path.join('runs', 'studies', study), 'Workdirs of the cells.')


def parse_configs(items: Sequence[str], *, must_exist: bool = True) -> dict[str, str]:
  """['method=path', ...] -> {method: path}, checking each path exists when cells are to run (config names
  are data: a study keeps working when a config file is renamed, by passing the new path)."""
  out = {}
  for item in items:
    method, sep, path = item.partition('=')
    if not sep or not method or not path:
      raise ValueError(f'--configs entries are method=path, got {item!r}.')
    if must_exist and not os.path.exists(os.path.join(ROOT, path)):
      raise FileNotFoundError(f'--configs: {path} (for {method}) does not exist.')
    out[method] = path
  return out


def overrides(**fields: Any) -> tuple[str, ...]:
  """--config.a.b=value flags from keyword names with '__' for dots: overrides(train__seed=1)."""
  def fmt(v):
    if isinstance(v, (tuple, list)):
      return '(' + ','.join(fmt(x) for x in v) + (',)' if len(v) == 1 else ')')
    return str(v)  # '' gives '--config.a.b=': ml_collections sets an empty string (a quoted "''" stays literal)
  return tuple(f'--config.{k.replace("__", ".")}={fmt(v)}' for k, v in fields.items())
