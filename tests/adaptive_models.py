"""The small exit models that test_adaptive.py and test_sweet_eval.py share (conftest's `models` fixture): a
5-layer encoder with exits after layers 1, 3 and 5, and sharpened heads so confidences spread over (1/3, 1)."""

import jax
import numpy as np

import encoder_jax
from sweet_jax import exits

CFG = encoder_jax.EncoderConfig(vocab_size=37, hidden_size=10, num_layers=5, num_heads=2, intermediate_size=13,
                                max_position_embeddings=23)
ECFG = exits.ExitConfig((1, 3, 5), 3, pooling='mean')
N, S = 29, 7
TEMPS = np.array([0.7, 1.3, 1.0], np.float32)


def sharpen(head):
  # Random heads at init scale give near-uniform softmax; a large classifier spreads confidences over (1/3, 1).
  return {**head, 'classifier': {'kernel': head['classifier']['kernel'] * 1000.0, 'bias': head['classifier']['bias']}}


def make_models():
  """method -> params: sweet and early_exit share one exit model; multi_model has its own members."""
  pretrained = encoder_jax.init_params(CFG, jax.random.key(0))
  ee = exits.init_exit_model(jax.random.key(1), CFG, pretrained, ECFG)
  ee['heads'] = tuple(sharpen(h) for h in ee['heads'])
  mm = exits.init_multi_model(jax.random.key(3), CFG, pretrained, ECFG)
  mm['models'] = tuple({**m, 'head': sharpen(m['head'])} for m in mm['models'])
  return {'sweet': ee, 'early_exit': ee, 'multi_model': mm}
