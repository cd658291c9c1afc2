"""BERT (Devlin et al. 2018): post-LN, exact GELU in HF (tanh in the TF original), LN eps 1e-12,
learned absolute positions, 2 token types, tanh pooler, MLM (tied) + NSP heads."""

from bertjax.models.registry import (Family, bert_architecture, bert_body_names,
                                     bert_config_from_hf, bert_config_to_hf, bert_task_names,
                                     register)

MLM_NAMES = {"transform": "cls.predictions.transform.dense",
             "norm": "cls.predictions.transform.LayerNorm", "bias": "cls.predictions.bias",
             "decoder": "cls.predictions.decoder"}


def weight_names(cfg):
  t = bert_body_names(cfg)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  if {"nsp", "sop"} & set(cfg.heads):
    t.linear("seq_relationship.dense", "cls.seq_relationship", body=False)
  bert_task_names(cfg, t)
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert_architecture(cfg, "Bert")
  heads = set(cfg.heads)
  if {"mlm", "nsp"} <= heads:
    return "BertForPreTraining", True
  if "mlm" in heads:
    return "BertForMaskedLM", False
  if "nsp" in heads:
    return "BertForNextSentencePrediction", True
  return "BertModel", cfg.pooler


DEFAULTS = dict(vocab_size=30522, hidden_act="gelu", norm_eps=1e-12, type_vocab_size=2,
                pad_token_id=0, max_position_embeddings=512, pooler=True, heads=("mlm", "nsp"))

FAMILY = register(Family(
    name="bert", defaults=DEFAULTS, hf_model_type="bert", hf_prefix="bert",
    config_from_hf=bert_config_from_hf, config_to_hf=bert_config_to_hf,
    weight_names=weight_names, architecture=architecture,
    head_keys={"mlm": "cls.predictions.bias", "nsp": "cls.seq_relationship.weight",
               "pooler": "pooler.dense.weight"},
    decoder_key="cls.predictions.decoder.weight", decoder_bias_key="cls.predictions.decoder.bias"))
