"""RoBERTa's Hugging Face names: BERT's body, ``lm_head``, a ``classifier.dense`` +
``out_proj`` sequence head; positions offset by ``pad_token_id + 1``."""

from bertjax.interop import bert
from bertjax.interop.adapter import HFAdapter

MLM_NAMES = {"transform": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias",
             "decoder": "lm_head.decoder"}


def config_from_hf(d):
  fields = bert.config_from_hf(d)
  fields["position_offset"] = fields["pad_token_id"] + 1
  return fields


def weight_names(cfg):
  t = bert.body_names(cfg)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  bert.task_names(cfg, t, sequence_transform="classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert.task_model_architecture(cfg, "Roberta")
  return ("RobertaForMaskedLM", False) if "mlm" in cfg.heads else ("RobertaModel", cfg.pooler)


ADAPTER = HFAdapter(
    family="roberta", hf_model_type="roberta", hf_prefix="roberta",
    config_from_hf=config_from_hf, config_to_hf=bert.config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"mlm": "lm_head.bias", "pooler": "pooler.dense.weight"},
    decoder_key="lm_head.decoder.weight", decoder_bias_key="lm_head.decoder.bias")
