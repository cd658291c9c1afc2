"""ALBERT (Lan et al. 2019): factorized embeddings (E=128 -> H), all layers sharing one block
group, tanh-GELU, no dropout in v2, MLM head projecting to E, sentence-order prediction."""

from bertjax.models.registry import (BERT_EMBEDDINGS, Family, bert_architecture,
                                     bert_config_from_hf, bert_config_to_hf, bert_task_names,
                                     register)
from bertjax.interop.names import NameTable

BLOCK = {
    "attention.query": "attention.query", "attention.key": "attention.key",
    "attention.value": "attention.value", "attention.out": "attention.dense",
    "attention_norm": "attention.LayerNorm", "mlp.wi": "ffn", "mlp.wo": "ffn_output",
    "mlp_norm": "full_layer_layer_norm",
}
MLM_NAMES = {"transform": "predictions.dense", "norm": "predictions.LayerNorm",
             "bias": "predictions.bias", "decoder": "predictions.decoder"}


def config_from_hf(d):
  return dict(bert_config_from_hf(d), embedding_size=d["embedding_size"],
              num_hidden_groups=d.get("num_hidden_groups", 1),
              inner_group_num=d.get("inner_group_num", 1),
              classifier_dropout=float(d.get("classifier_dropout_prob", 0.1)))


def config_to_hf(cfg):
  return dict(bert_config_to_hf(cfg), embedding_size=cfg.embed_size,
              num_hidden_groups=cfg.num_hidden_groups or cfg.num_layers,
              inner_group_num=cfg.inner_group_num,
              classifier_dropout_prob=(cfg.classifier_dropout if cfg.classifier_dropout is not None
                                       else cfg.hidden_dropout))


def weight_names(cfg):
  t = NameTable()
  t.embeddings(cfg, BERT_EMBEDDINGS)
  if cfg.embed_size != cfg.hidden_size:
    t.linear("encoder.embedding_projection", "encoder.embedding_hidden_mapping_in")
  inner = cfg.inner_group_num if cfg.num_hidden_groups else 1
  for b in range(cfg.num_blocks):
    t.block(f"encoder.layers.{b}",
            f"encoder.albert_layer_groups.{b // inner}.albert_layers.{b % inner}", BLOCK, cfg)
  if cfg.pooler:
    t.linear("encoder.pooler.dense", "pooler")
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  if {"nsp", "sop"} & set(cfg.heads):
    t.linear("seq_relationship.dense", "sop_classifier.classifier", body=False)
  bert_task_names(cfg, t)
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert_architecture(cfg, "Albert")
  heads = set(cfg.heads)
  if "mlm" in heads and heads & {"sop", "nsp"}:
    return "AlbertForPreTraining", True
  if "mlm" in heads:
    return "AlbertForMaskedLM", False
  return "AlbertModel", cfg.pooler


DEFAULTS = dict(vocab_size=30000, embedding_size=128, hidden_act="gelu_tanh", norm_eps=1e-12,
                hidden_dropout=0.0, attention_dropout=0.0, num_hidden_groups=1, inner_group_num=1,
                type_vocab_size=2, pad_token_id=0, pooler=True, heads=("mlm", "sop"),
                classifier_dropout=0.1)  # classifier_dropout_prob: ALBERT v2 has no other dropout

FAMILY = register(Family(
    name="albert", defaults=DEFAULTS, hf_model_type="albert", hf_prefix="albert",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"mlm": "predictions.bias", "sop": "sop_classifier.classifier.weight",
               "pooler": "pooler.weight"},
    decoder_key="predictions.decoder.weight", decoder_bias_key="predictions.decoder.bias"))
