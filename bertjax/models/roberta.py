"""RoBERTa (Liu et al. 2019): BERT's block with LN eps 1e-5, positions offset by padding_idx+1
(fairseq make_positions; 514-row table), one zeroed token type, no NSP, no pretrained pooler."""

from bertjax.models.registry import (Family, bert_architecture, bert_body_names,
                                     bert_config_from_hf, bert_config_to_hf, bert_task_names,
                                     register)

MLM_NAMES = {"transform": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias",
             "decoder": "lm_head.decoder"}


def config_from_hf(d):
  fields = bert_config_from_hf(d)
  fields["position_offset"] = fields["pad_token_id"] + 1
  return fields


def weight_names(cfg):
  t = bert_body_names(cfg)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  bert_task_names(cfg, t, sequence_transform="classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert_architecture(cfg, "Roberta")
  return ("RobertaForMaskedLM", False) if "mlm" in cfg.heads else ("RobertaModel", cfg.pooler)


DEFAULTS = dict(vocab_size=50265, hidden_act="gelu", head_act="gelu", norm_eps=1e-5,
                type_vocab_size=1, pad_token_id=1, position_offset=2, max_position_embeddings=514,
                pooler=False, heads=("mlm",), classifier_pooling="cls",
                classifier_transform="sequence", classifier_act="tanh")

FAMILY = register(Family(
    name="roberta", defaults=DEFAULTS, hf_model_type="roberta", hf_prefix="roberta",
    config_from_hf=config_from_hf, config_to_hf=bert_config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"mlm": "lm_head.bias", "pooler": "pooler.dense.weight"},
    decoder_key="lm_head.decoder.weight", decoder_bias_key="lm_head.decoder.bias"))
