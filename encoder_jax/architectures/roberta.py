"""RoBERTa: BERT's encoder with positions numbered past the padding id (fairseq's make_positions)."""

from encoder_jax.architectures.base import Family, padding_offset_positions


class Roberta(Family):
  """Real tokens count up from pad_token_id + 1 (EncoderConfig.position_offset)."""

  def position_ids(self, config, input_ids):
    return padding_offset_positions(config, input_ids)


FAMILY = Roberta()
