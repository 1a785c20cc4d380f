"""Numbers the README quotes that no study cell's raw JSON holds, recomputed from committed inputs into small
JSON files the reports and the README read.

  python -m experiments.artifacts            # writes all of them (about a minute on 2 CPU cores)

  docs/results/papa_study/truncation.json        per model and task, the share of texts and of word pieces
                         that PAPA's layout cuts: a single text gets the first L/2 - 1 word pieces after [CLS]
                         (encoder_jax.tokenization.papa_layout), here over the PAPA cells' data (papa_demo's:
                         3,000 training and 1,000 eval examples, data.seed 42) at the study's lengths.
  docs/results/sweet_study_a/timing_spread.json  the five study-A evaluations timed twice (--redo=eval): each
                         threshold's measured speedup both times and the relative change, read from the two
                         committed versions of their raw JSON (git history: TIMED_FIRST, TIMED_AGAIN).
  python -m experiments.artifacts --averages=minilm=W1/papa/averages.npz,mpnet=W2/papa/averages.npz \
      --averages_note='how the files were made'
  docs/results/papa_study/constants_summary.json  the neighbourhood of the constant matrices
                         (papa_study.constants_summary) from cells' averages.npz: the study's workdirs are gone,
                         so these are remade by the estimate stage of a cell's recorded command (deterministic:
                         data, seed and model fix it), and the note records how.
Not recomputable here, and so not in any artifact: the bit-identical rerun of minilm_movie_reviews_s43 (a
session's comparison of two workdirs that are gone). The README says so where it quotes it.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Sequence

from absl import app, flags

from experiments import common, papa_study

TIMED_FIRST, TIMED_AGAIN = '0557d3c', '22e346e'  # the commits holding the first and the second timings
RETIMED = ('movie_reviews_mean_sweet_s42', 'movie_reviews_mean_sweet_s44', 'movie_reviews_mean_early_exit_s42',
           'movie_reviews_mean_early_exit_s43', 'movie_reviews_cls_sweet_s42')
PAPA_LENGTHS = {'movie_reviews': 64, 'tweets': 64, 'bbc_news': 128}
PAPA_MODELS = {'minilm': 'minilm', 'mpnet': 'mpnet-base'}


def truncation(token_counts: Sequence[int], room: int) -> dict[str, Any]:
  """Texts of token_counts word pieces each (no special tokens), laid out with room for `room` of them: the share
  of texts cut and of word pieces lost."""
  if not len(token_counts):
    raise ValueError('No texts.')
  lost = sum(max(0, n - room) for n in token_counts)
  return {'texts': len(token_counts), 'room': room, 'texts_truncated': sum(n > room for n in token_counts)
          / len(token_counts), 'word_pieces': int(sum(token_counts)), 'word_pieces_cut': lost / sum(token_counts)}


def papa_truncation(models: dict[str, str] = PAPA_MODELS) -> dict[str, Any]:
  """truncation() for each model's tokenizer and task, over the train and eval splits of the PAPA cells."""
  from configs import papa_demo
  from encoder_jax.tokenization import load_tokenizer
  from pipeline import data
  out = {}
  for task, length in PAPA_LENGTHS.items():
    cfg = papa_demo.get_config().data
    cfg.source = task
    splits = data.load_splits(cfg)
    for model, checkpoint in models.items():
      tok = load_tokenizer(checkpoint)
      room = length // 2 - 1  # papa_layout: [CLS] (or <s>) then the text in the first half
      for name, split in (('train', splits.train), ('eval', splits.eval)):
        counts = [len(ids) for ids in tok(list(split.texts[0]), add_special_tokens=False)['input_ids']]
        out[f'{model}/{task}/{name}'] = dict(truncation(counts, room), length=length)
  return out


def _git_json(commit: str, path: str) -> dict[str, Any]:
  text = subprocess.run(['git', 'show', f'{commit}:{os.path.relpath(path, common.ROOT)}'], cwd=common.ROOT,
                        capture_output=True, text=True, check=True).stdout
  return json.loads(text)


def timing_spread(cells: Sequence[str] = RETIMED) -> dict[str, Any]:
  """Per re-timed cell and threshold, the two measured speedups of the same checkpoint and their relative change
  (second / first - 1); accuracies and layer fractions must agree to the last digit (same checkpoint)."""
  rows, worst = {}, None
  for cell in cells:
    path = os.path.join(common.RESULTS_ROOT, 'sweet_study_a', 'runs', f'{cell}.json')
    first, again = _git_json(TIMED_FIRST, path), _git_json(TIMED_AGAIN, path)
    rows[cell] = []
    for a, b in zip(first['curve']['points'], again['curve']['points']):
      if (a['threshold'], a['accuracy'], a['layer_fraction']) != (b['threshold'], b['accuracy'], b['layer_fraction']):
        raise ValueError(f'{cell}: the two timings scored different outputs at threshold {a["threshold"]}.')
      change = b['measured_speedup'] / a['measured_speedup'] - 1
      rows[cell].append({'threshold': a['threshold'], 'first': a['measured_speedup'],
                         'again': b['measured_speedup'], 'relative_change': change})
      if worst is None or abs(change) > abs(worst['relative_change']):
        worst = dict(rows[cell][-1], cell=cell)
  return {'commits': {'first': TIMED_FIRST, 'again': TIMED_AGAIN}, 'cells': rows, 'largest_change': worst,
          'note': 'first timings shared the 2 cores with a benchmark or the test suite; the second ran alone'}


def constants(averages_paths: dict[str, str]) -> dict[str, Any]:
  """papa_study.constants_summary of each model's averages.npz (model -> path), with the files' identities."""
  from papa_jax import averages
  from pipeline.fingerprint import file_identity
  return {model: {'averages': file_identity(path), **papa_study.constants_summary(averages.load_constants(path))}
          for model, path in averages_paths.items()}


def main(argv):
  del argv  # everything comes from flags
  if flags.FLAGS.averages:
    paths = dict(item.split('=', 1) for item in flags.FLAGS.averages)
    out = constants(paths) | {'made_from': flags.FLAGS.averages_note}
    common.write_json(os.path.join(common.RESULTS_ROOT, 'papa_study', 'constants_summary.json'), out)
    print(f'constants summary of {sorted(paths)} written')
    return
  spread = timing_spread()
  common.write_json(os.path.join(common.RESULTS_ROOT, 'sweet_study_a', 'timing_spread.json'), spread)
  w = spread['largest_change']
  print(f'timing spread: largest change {100 * w["relative_change"]:+.1f}% ({w["cell"]}, threshold '
        f'{w["threshold"]}: {w["first"]:.2f}x then {w["again"]:.2f}x)')
  trunc = papa_truncation()
  common.write_json(os.path.join(common.RESULTS_ROOT, 'papa_study', 'truncation.json'), trunc)
  for key, v in trunc.items():
    print(f'{key}: {100 * v["texts_truncated"]:.1f}% of texts, {100 * v["word_pieces_cut"]:.1f}% of word pieces cut')


if __name__ == '__main__':
  flags.DEFINE_list('averages', [], 'model=path of a PAPA cell\'s papa/averages.npz: write only '
                    'docs/results/papa_study/constants_summary.json from these.')
  flags.DEFINE_string('averages_note', '', 'How the averages files were made (recorded in the JSON).')
  app.run(main)
