"""Tiny exit-model workdirs as train.py and eval.py leave them (checkpoints/, results.json, eval/), on a tiny
random BERT, for the tests of predict.py and export.py.

Training would only slow the tests (what they check holds for any weights), so the checkpoint holds the
method's initial params with every exit's classifier scaled up, so that confidences spread over (1/2, 1) and
thresholds split the examples between exits; eval/ is written by sweet_eval.evaluate itself."""

import jax
import jax.numpy as jnp
import numpy as np

from drivers import methods
from drivers import sweet_eval
from configs import sweet_demo, sweet_papa_demo
from papa_jax import averages
from pipeline import checkpoints, data, reporting, train_loop
from tests.test_papa_experiment import write_split
from tests.tiny_checkpoint import write_checkpoint

EXIT_LAYERS = (1, 2, 3)
PAPA_LENGTH = 12


def task(root):
  """A tiny 3-layer checkpoint, train/eval csv files and PAPA averages under root."""
  write_checkpoint(root / 'ckpt', layers=3, max_positions=20)
  write_split(root / 'train.csv', 60, 0)
  write_split(root / 'eval.csv', 21, 1)
  est = averages.AttentionSums.zeros(3, 3, PAPA_LENGTH)
  est.sums[:] = np.random.default_rng(0).random(est.sums.shape)
  est.counts[:] = 1.0
  averages.save(root / 'avg.npz', est)
  return root


def config_for(root, method: str, constant: bool = False, *, checkpoint=None, exit_layers=None, pooling=None):
  """The config of a workdir under root (checkpoint: default the tiny one; exit_layers: EXIT_LAYERS; pooling:
  the demo's)."""
  config = (sweet_papa_demo if constant else sweet_demo).get_config()
  config.model.pooling = pooling or config.model.pooling
  config.method = method
  config.model.checkpoint = checkpoint or str(root / 'ckpt')
  config.model.exit_layers = exit_layers or EXIT_LAYERS
  if constant:
    config.model.constants_path = str(root / 'avg.npz')
  d = config.data
  d.source, d.train_path, d.eval_path = 'files', str(root / 'train.csv'), str(root / 'eval.csv')
  # No calibration split: temperatures fit on a random model's held-out data go to the upper bound (every
  # confidence ~0.5); eval.py then records temperatures of 1 (calibrated: false).
  d.max_train_samples, d.calibration_size, d.max_seq_length = 0, 0, 16
  t = config.train
  t.batch_size, t.num_epochs, t.learning_rate, t.checkpoint_every = 8, 1, 1e-3, 0
  e = config.eval
  e.batch_size, e.timing_repeats, e.timing_examples = 2, 1, 0  # batch 2: engine buckets 1 and 2, few compilations
  return config


def _sharpen(head, scale):
  return {**head, 'classifier': {'kernel': head['classifier']['kernel'] * scale,
                                 'bias': head['classifier']['bias']}}


def make_workdir(root, name: str, method: str, *, constant: bool = False, evaluate: bool = True, train_steps: int = 0,
                 **model):
  """A checkpointed (and, with evaluate, evaluated) workdir: -> (config, workdir). model: config_for's.
  train_steps: real optimizer steps (the method's loss, train_loop's optimizer and step) on the first training
  batches before the checkpoint is saved, for tests that need trained rather than initial parameters."""
  config = config_for(root, method, constant, **model)
  workdir = str(root / name)
  splits = data.load_splits(config.data)
  built = methods.build(config, num_labels=len(splits.train.label_names))
  params = built.method.init(jax.random.key(7))
  scale = 300.0  # random heads at init scale give confidences ~0.5; this spreads them
  if method == 'multi_model':
    params['models'] = tuple({**m, 'head': _sharpen(m['head'], scale)} for m in params['models'])
  else:
    params['heads'] = tuple(_sharpen(h, scale) for h in params['heads'])
  tx = train_loop.make_optimizer(config.train, max(train_steps, 1), param_groups=built.method.param_groups)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  step_fn = jax.jit(train_loop.make_train_step(built.method, tx))
  batches = data.iterate_batches(splits.train, built.encode_fn, config.train.batch_size, seed=0, epoch=0,
                                 shuffle=False, drop_remainder=True)
  for i, batch in zip(range(train_steps), batches):
    state, _ = step_fn(state, batch, jax.random.key(i))
  saved = max(train_steps, 1)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(saved, {**state, 'step': jnp.full((), saved, jnp.int32)}, {'step': saved})
  ckpt.close()
  reporting.write_json(f'{workdir}/results.json', {'method': method, 'label_names': list(splits.train.label_names)})
  if evaluate:
    params = train_loop.restore_params(config, workdir, built.method)
    sweet_eval.evaluate(config, workdir, method=method, encoder_config=built.encoder_config,
                        exit_config=built.exit_config, params=params, splits=splits, encode_fn=built.encode_fn,
                        constants=built.constants)
  return config, workdir
