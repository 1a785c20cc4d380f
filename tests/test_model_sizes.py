"""The papers' large (and base) encoders build from their config.json, with the published parameter counts.

The config dicts are those of the hub's config.json files (fields the encoder reads). Exact counts are those of
Hugging Face's torch models built from the same configs (`large_counts()` in tests/fixtures/make_fixtures.py
prints them); the published figures are the model cards' rounded ones.
"""

import jax
import numpy as np
import pytest

import encoder_jax

_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              hidden_act='gelu', hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             hidden_act='gelu', hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
_DEBERTA_V1 = dict(model_type='deberta', vocab_size=50265, max_position_embeddings=512, relative_attention=True,
                   max_relative_positions=-1, pos_att_type='c2p|p2c', position_biased_input=False, type_vocab_size=0,
                   layer_norm_eps=1e-7, pad_token_id=0)
_DEBERTA_V3 = dict(model_type='deberta-v2', vocab_size=128100, max_position_embeddings=512, relative_attention=True,
                   position_buckets=256, norm_rel_ebd='layer_norm', share_att_key=True, pos_att_type=['p2c', 'c2p'],
                   position_biased_input=False, type_vocab_size=0, max_relative_positions=-1, layer_norm_eps=1e-7,
                   pad_token_id=0)
CONFIGS = {
    'bert-large-uncased': dict(_LARGE, model_type='bert', vocab_size=30522, max_position_embeddings=512,
                               type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0),
    'roberta-large': dict(_LARGE, model_type='roberta', vocab_size=50265, max_position_embeddings=514,
                          type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1),
    'microsoft/deberta-large': dict(_LARGE, **_DEBERTA_V1),
    'microsoft/deberta-v3-large': dict(_LARGE, **_DEBERTA_V3),
    'microsoft/deberta-base': dict(_BASE, **_DEBERTA_V1),
    'microsoft/deberta-v3-base': dict(_BASE, **_DEBERTA_V3),
}
# name -> (Hugging Face torch count of the base model, published figure in millions, pooler in the HF count)
COUNTS = {
    'bert-large-uncased': (335_141_888, 336, True),  # "336M parameters"
    'roberta-large': (355_359_744, 355, True),  # "355M parameters"
    'microsoft/deberta-large': (405_163_008, 400, False),  # DeBERTa paper: ~400M (HF card: 405M)
    'microsoft/deberta-v3-large': (434_012_160, 435, False),  # "304M backbone + 131M embeddings"
    'microsoft/deberta-base': (138_601_728, 140, False),  # DeBERTa paper: 140M
    'microsoft/deberta-v3-base': (183_831_552, 184, False),  # "86M backbone + 98M embeddings"
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_builds_from_config_json_with_the_published_size(name):
  config = encoder_jax.EncoderConfig.from_hf(CONFIGS[name])
  shapes = jax.eval_shape(lambda k: encoder_jax.init_params(config, k), jax.random.key(0))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  exact, published, pooler = COUNTS[name]
  h = config.hidden_size
  extra = -(h * h + h) if pooler else 0  # the HF count includes BERT's pooler; ours keeps it beside the encoder
  assert ours == exact + extra, (ours, exact + extra)
  assert config.num_layers == CONFIGS[name]['num_hidden_layers']
  assert abs(exact / 1e6 - published) / published < 0.015, (exact, published)
