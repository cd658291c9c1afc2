"""ALBERT's Hugging Face names: grouped shared layers
(``albert_layer_groups.G.albert_layers.K``), the embedding projection, ``predictions`` and the
sentence-order ``sop_classifier``."""

from bertjax.interop import bert
from bertjax.interop.adapter import HFAdapter
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
  return dict(bert.config_from_hf(d), embedding_size=d["embedding_size"],
              num_hidden_groups=d.get("num_hidden_groups", 1),
              inner_group_num=d.get("inner_group_num", 1),
              classifier_dropout=float(d.get("classifier_dropout_prob", 0.1)))


def config_to_hf(cfg):
  return dict(bert.config_to_hf(cfg), embedding_size=cfg.embed_size,
              num_hidden_groups=cfg.num_hidden_groups or cfg.num_layers,
              inner_group_num=cfg.inner_group_num,
              classifier_dropout_prob=(cfg.classifier_dropout if cfg.classifier_dropout is not None
                                       else cfg.hidden_dropout))


def weight_names(cfg):
  t = NameTable()
  t.embeddings(cfg, bert.EMBEDDINGS)
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
  bert.task_names(cfg, t)
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert.task_model_architecture(cfg, "Albert")
  heads = set(cfg.heads)
  if "mlm" in heads and heads & {"sop", "nsp"}:
    return "AlbertForPreTraining", True
  if "mlm" in heads:
    return "AlbertForMaskedLM", False
  return "AlbertModel", cfg.pooler


ADAPTER = HFAdapter(
    family="albert", hf_model_type="albert", hf_prefix="albert",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"mlm": "predictions.bias", "sop": "sop_classifier.classifier.weight",
               "pooler": "pooler.weight"},
    decoder_key="predictions.decoder.weight", decoder_bias_key="predictions.decoder.bias")
