"""ELECTRA (Clark et al. 2020): a BERT body with E-wide embeddings projected to H
(``embeddings_project``), no pooler; the discriminator's replaced-token head has no LayerNorm;
the generator is a smaller body sharing all embeddings, with a GELU + LN MLM head."""

from bertjax.models.registry import (Family, bert_architecture, bert_body_names,
                                     bert_config_from_hf, bert_config_to_hf, bert_task_names,
                                     register)

MLM_NAMES = {"transform": "generator_predictions.dense",
             "norm": "generator_predictions.LayerNorm", "bias": "generator_lm_head.bias",
             "decoder": "generator_lm_head"}


def config_from_hf(d):
  return dict(bert_config_from_hf(d), embedding_size=d.get("embedding_size", d["hidden_size"]))


def config_to_hf(cfg):
  return dict(bert_config_to_hf(cfg), embedding_size=cfg.embed_size)


def weight_names(cfg):
  """Discriminator (rtd) or generator (mlm) checkpoint names; a joint model exports its
  discriminator (the generator.* parameters have no place in one HF checkpoint)."""
  t = bert_body_names(cfg)
  if cfg.embed_size != cfg.hidden_size:
    t.linear("encoder.embedding_projection", "embeddings_project")
  if "rtd" in cfg.heads:
    t.linear("rtd.dense", "discriminator_predictions.dense", body=False)
    t.linear("rtd.prediction", "discriminator_predictions.dense_prediction", body=False)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  bert_task_names(cfg, t, sequence_transform="classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert_architecture(cfg, "Electra")
  if "rtd" in cfg.heads:
    return "ElectraForPreTraining", False
  if "mlm" in cfg.heads:
    return "ElectraForMaskedLM", False
  return "ElectraModel", False


DEFAULTS = dict(vocab_size=30522, hidden_act="gelu", head_act="gelu", norm_eps=1e-12,
                type_vocab_size=2, pad_token_id=0, pooler=False, heads=("rtd",),
                classifier_pooling="cls", classifier_transform="sequence",
                classifier_act="gelu")  # "although BERT uses tanh here" (ElectraClassificationHead)

FAMILY = register(Family(
    name="electra", defaults=DEFAULTS, hf_model_type="electra", hf_prefix="electra",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"rtd": "discriminator_predictions.dense.weight", "mlm": "generator_lm_head.bias"},
    decoder_key="generator_lm_head.weight"))
