"""DistilBERT's Hugging Face names (``transformer.layer.N``, ``q_lin``/``k_lin``/...,
``vocab_transform``/``vocab_projector``, ``pre_classifier``) and its config.json vocabulary
(``dim``, ``n_layers``, ``hidden_dim``, ...)."""

from bertjax.config import ConfigError
from bertjax.interop.adapter import HFAdapter, act_from_hf, act_to_hf, task_architecture
from bertjax.interop.names import NameTable

EMBEDDINGS = {"word": "embeddings.word_embeddings", "position": "embeddings.position_embeddings",
              "norm": "embeddings.LayerNorm"}
BLOCK = {
    "attention.query": "attention.q_lin", "attention.key": "attention.k_lin",
    "attention.value": "attention.v_lin", "attention.out": "attention.out_lin",
    "attention_norm": "sa_layer_norm", "mlp.wi": "ffn.lin1", "mlp.wo": "ffn.lin2",
    "mlp_norm": "output_layer_norm",
}
MLM_NAMES = {"transform": "vocab_transform", "norm": "vocab_layer_norm",
             "bias": "vocab_projector.bias", "decoder": "vocab_projector"}


def config_from_hf(d):
  if d.get("sinusoidal_pos_embds"):
    raise ConfigError("config.json sinusoidal_pos_embds=true is not supported (learned positions only)")
  return dict(
      vocab_size=d["vocab_size"], hidden_size=d["dim"], num_layers=d["n_layers"],
      num_heads=d["n_heads"], intermediate_size=d["hidden_dim"],
      hidden_act=act_from_hf(d.get("activation", "gelu"), "activation"),
      max_position_embeddings=d["max_position_embeddings"],
      pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else 0,
      hidden_dropout=float(d.get("dropout", 0.1)),
      attention_dropout=float(d.get("attention_dropout", 0.1)),
      initializer_range=float(d.get("initializer_range", 0.02)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
      classifier_dropout=float(d.get("seq_classif_dropout", 0.2)))


def config_to_hf(cfg):
  if cfg.norm_eps != 1e-12:
    raise ConfigError("DistilBERT export needs model.norm_eps=1e-12 (fixed in transformers)")
  return dict(
      vocab_size=cfg.vocab_size, dim=cfg.hidden_size, n_layers=cfg.num_layers,
      n_heads=cfg.num_heads, hidden_dim=cfg.intermediate_size, activation=act_to_hf(cfg.hidden_act),
      max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id,
      dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout,
      initializer_range=cfg.initializer_range, sinusoidal_pos_embds=False,
      tie_word_embeddings=cfg.tie_word_embeddings,
      seq_classif_dropout=(cfg.classifier_dropout if cfg.classifier_dropout is not None
                           else cfg.hidden_dropout))


def weight_names(cfg):
  t = NameTable()
  t.embeddings(cfg, EMBEDDINGS)
  for i in range(cfg.num_blocks):
    t.block(f"encoder.layers.{i}", f"transformer.layer.{i}", BLOCK, cfg)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  if cfg.task_head == "classifier":  # pre_classifier -> ReLU -> dropout -> classifier
    t.task_head(cfg, transform="pre_classifier", output="classifier")
  elif cfg.task_head:
    t.task_head(cfg, output="qa_outputs" if cfg.task_head == "qa" else "classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return task_architecture(cfg, "DistilBert"), False
  return ("DistilBertForMaskedLM", False) if "mlm" in cfg.heads else ("DistilBertModel", False)


ADAPTER = HFAdapter(
    family="distilbert", hf_model_type="distilbert", hf_prefix="distilbert",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture, head_keys={"mlm": "vocab_projector.bias"},
    decoder_key="vocab_projector.weight")
