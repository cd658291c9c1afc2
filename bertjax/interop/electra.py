"""ELECTRA's Hugging Face names: BERT's body with ``embeddings_project``, the
discriminator's ``discriminator_predictions``, the generator's ``generator_predictions`` /
``generator_lm_head``."""

from bertjax.interop import bert
from bertjax.interop.adapter import HFAdapter

MLM_NAMES = {"transform": "generator_predictions.dense",
             "norm": "generator_predictions.LayerNorm", "bias": "generator_lm_head.bias",
             "decoder": "generator_lm_head"}


def config_from_hf(d):
  return dict(bert.config_from_hf(d), embedding_size=d.get("embedding_size", d["hidden_size"]))


def config_to_hf(cfg):
  return dict(bert.config_to_hf(cfg), embedding_size=cfg.embed_size)


def weight_names(cfg):
  """Discriminator (rtd) or generator (mlm) checkpoint names; a joint model exports its
  discriminator (the generator.* parameters have no place in one HF checkpoint)."""
  t = bert.body_names(cfg)
  if cfg.embed_size != cfg.hidden_size:
    t.linear("encoder.embedding_projection", "embeddings_project")
  if "rtd" in cfg.heads:
    t.linear("rtd.dense", "discriminator_predictions.dense", body=False)
    t.linear("rtd.prediction", "discriminator_predictions.dense_prediction", body=False)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  bert.task_names(cfg, t, sequence_transform="classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return bert.task_model_architecture(cfg, "Electra")
  if "rtd" in cfg.heads:
    return "ElectraForPreTraining", False
  if "mlm" in cfg.heads:
    return "ElectraForMaskedLM", False
  return "ElectraModel", False


ADAPTER = HFAdapter(
    family="electra", hf_model_type="electra", hf_prefix="electra",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture,
    head_keys={"rtd": "discriminator_predictions.dense.weight", "mlm": "generator_lm_head.bias"},
    decoder_key="generator_lm_head.weight")
