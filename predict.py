"""Predicts new text with a trained exit model, exiting early for real:

  python predict.py --config configs/sweet_demo.py --workdir runs/sweet_demo --input texts.csv \
      --output predictions.jsonl --max_accuracy_drop 0.5

--input: .csv/.tsv/.jsonl/.json/.parquet with the config's text field(s) as columns, .txt with one example per
line (a tab between the two texts of a pair), or '-' for the lines of standard input. --output: one JSON
object per input row, in input order: row (0-based), line (1-based, where the file has lines), label,
confidence, exit (0-based), layer (the exit sits after it), and with --all_exits every exit's probabilities
[exits][labels]; '-' or nothing writes to standard output. The threshold: --threshold, or --max_accuracy_drop
(points of accuracy), which picks the fastest threshold of WORKDIR/eval/curve.json within that much of the
full model. A summary (examples, examples/s, share of layers run, exit counts, truncated texts, the checkpoint
step and run identity used) goes to stderr; with an --output file, OUTPUT.run.json records the threshold, the
checkpoint step, the run identity and the code that predicted (pipeline.train_loop.scored_record).
"""

from __future__ import annotations

import contextlib
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from drivers import predictor
from encoder_jax import CheckpointError
from pipeline import data, fingerprint, reporting

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/sweet_demo.py', 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained workdir (default: runs/<config file name>).')
_INPUT = flags.DEFINE_string('input', None, "Examples to predict: a file, or '-' for standard input.")
_OUTPUT = flags.DEFINE_string('output', '-', "Where the predictions (jsonl) go; '-' = standard output.")
_THRESHOLD = flags.DEFINE_float('threshold', None, 'Exit threshold (rule: the evaluated curve\'s).')
_DROP = flags.DEFINE_float('max_accuracy_drop', None, 'Accuracy points the full model may lose: picks the '
                           'fastest threshold of WORKDIR/eval/curve.json within them.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Engine batch size (default config.eval.batch_size).')
_ALL = flags.DEFINE_bool('all_exits', False, 'Also write every exit\'s probabilities (runs every exit).')
_PROGRESS_OVER = 1000  # inputs above which a progress bar is shown


def main(argv):
  del argv  # everything comes from flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  if _INPUT.value is None:
    raise app.UsageError('--input is required (a file, or - for standard input).')
  if (_THRESHOLD.value is None) == (_DROP.value is None):
    raise app.UsageError('Give exactly one of --threshold and --max_accuracy_drop.')
  config = _CONFIG.value
  workdir = _WORKDIR.value or fingerprint.default_workdir(flags.FLAGS['config'].config_filename, config)
  try:
    inputs = predictor.read_inputs(_INPUT.value, predictor.text_fields(config))
    model = predictor.Predictor(config, workdir, threshold=_THRESHOLD.value, max_accuracy_drop=_DROP.value,
                                batch_size=_BATCH.value)
  except (data.DataError, predictor.WorkdirError, CheckpointError, FileNotFoundError, ValueError) as e:
    sys.exit(f'predict.py: {e}')  # the message names the file, row or workdir; a traceback adds nothing
  print(f'Using {model.why}' if _DROP.value is not None else
        f'Using threshold {model.threshold:g} ({model.rule} rule; {model.why}).', file=sys.stderr)
  out = model(inputs.examples(), all_exits=_ALL.value, progress=len(inputs.where) > _PROGRESS_OVER)
  with (open(_OUTPUT.value, 'w') if _OUTPUT.value != '-' else contextlib.nullcontext(sys.stdout)) as f:
    for i, row in enumerate(out):
      line = {'line': inputs.lines[i]} if inputs.lines[i] is not None else {}
      f.write(json.dumps({'row': i, **line, **row}) + '\n')
  record = model.record or {}
  if _OUTPUT.value != '-':  # beside the predictions: which parameters made them (rows stay one per input)
    reporting.write_json(_OUTPUT.value + '.run.json', {'threshold': model.threshold, 'rule': model.rule, **record})
  s = model.summary(out)
  counts = ', '.join(f'{c} at exit {i} (layer {l})' for i, (c, l) in enumerate(zip(s['exit_counts'],
                                                                                    s['exit_layers'])))
  print(f'{s["examples"]} examples in {s["seconds"]:.2f} s ({s["examples_per_s"]:.1f} examples/s, compilation '
        f'included); {s["layer_fraction"]:.1%} of the layers run ({s["flops_fraction"]:.1%} of the FLOPs) at '
        f'threshold {s["threshold"]:g}; {counts}; {s["truncated"]} text(s) truncated to the model\'s length; '
        f'checkpoint step {record.get("checkpoint_step")}, run identity {record.get("run_identity_digest")}.',
        file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
