"""all-mpnet-base-v2 (12 x 768, real weights) against Hugging Face torch, when it is in the cache.

The weights are fetched once (0.4 GB; `python -c "import encoder_jax; encoder_jax.load_pretrained('mpnet-base')"`)
and are not in requirements.txt, so these tests skip cleanly without them. The fixture
(tests/fixtures/mpnet_base.npz, written by make_fixtures.py) holds every hidden state projected on 24 fixed
random directions, to stay small."""

from pathlib import Path

import jax
import numpy as np
import pytest

import encoder_jax
from encoder_jax import fetch

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(fetch.cached_mpnet_base() is None,
                                 reason='all-mpnet-base-v2 is not in the cache (fetch it once: see the docstring)')]
FIXTURE = Path(__file__).parent / 'fixtures' / 'mpnet_base.npz'


@pytest.fixture(scope='module')
def ref():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def test_real_weight_parity_every_layer(ref):
  config, params = encoder_jax.load_pretrained('mpnet-base')
  assert (config.model_type, config.num_layers, config.hidden_size, config.num_heads) == ('mpnet', 12, 768, 12)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert n_params == 109_486_464  # 110M, as published (with the pooler)
  hiddens = jax.jit(encoder_jax.encode, static_argnums=0)(config, params, ref['input_ids'], ref['attention_mask'])
  assert len(hiddens) == 13
  for layer, (got, want) in enumerate(zip(hiddens, ref['projected_hidden_states'])):
    projected = np.asarray(got, np.float64) @ ref['projection']
    np.testing.assert_allclose(projected, want, rtol=0, atol=1e-4, err_msg=f'hidden state {layer}')
  np.testing.assert_allclose(np.asarray(hiddens[-1][0]), ref['last_hidden_row0'], rtol=0, atol=1e-4)


def test_tokenizer_writes_mpnet_pairs(ref):
  """<s> A </s></s> B </s>, padded with id 1 (positions count from it), as the fixture's torch tokenizer did."""
  tokenizer = encoder_jax.load_tokenizer('mpnet-base')
  texts_b = [b or None for b in ref['texts_b'].tolist()]
  rows = [encoder_jax.tokenize(tokenizer, [a], None if b is None else [b], buckets=None,
                               max_length=ref['input_ids'].shape[1])
          for a, b in zip(ref['texts_a'].tolist(), texts_b)]
  np.testing.assert_array_equal(np.concatenate([r['input_ids'] for r in rows]), ref['input_ids'])
  pair = ref['input_ids'][1][ref['attention_mask'][1] > 0]
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  assert pair[0] == bos and pair[-1] == eos and list(pair).count(eos) == 3
  assert pair[list(pair).index(eos) + 1] == eos  # </s></s> between the sentences
