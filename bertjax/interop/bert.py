"""BERT's Hugging Face names (``BertModel``, ``BertForPreTraining``, task classes), and the
BERT-lineage pieces RoBERTa, ALBERT, ELECTRA and SpanBERT reuse: the config.json vocabulary,
the embedding and block names, the task heads."""

from bertjax.config import ConfigError, ModelConfig
from bertjax.interop.adapter import HFAdapter, act_from_hf, act_to_hf, task_architecture
from bertjax.interop.names import NameTable


def config_from_hf(d: dict) -> dict:
  if d.get("position_embedding_type", "absolute") != "absolute":
    raise ConfigError(f"config.json position_embedding_type={d['position_embedding_type']!r} "
                      "is not supported (only 'absolute')")
  return dict(
      vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
      num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
      intermediate_size=d["intermediate_size"], hidden_act=act_from_hf(d.get("hidden_act", "gelu")),
      max_position_embeddings=d["max_position_embeddings"],
      type_vocab_size=d.get("type_vocab_size", 2),
      pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else 0,
      norm_eps=float(d.get("layer_norm_eps", 1e-12)),
      hidden_dropout=float(d.get("hidden_dropout_prob", 0.1)),
      attention_dropout=float(d.get("attention_probs_dropout_prob", 0.1)),
      initializer_range=float(d.get("initializer_range", 0.02)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
      classifier_dropout=d.get("classifier_dropout"))


def config_to_hf(cfg: ModelConfig) -> dict:
  return dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      hidden_act=act_to_hf(cfg.hidden_act), max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, pad_token_id=cfg.pad_token_id,
      layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.hidden_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout,
      initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_word_embeddings,
      position_embedding_type="absolute", classifier_dropout=cfg.classifier_dropout)


EMBEDDINGS = {"word": "embeddings.word_embeddings", "position": "embeddings.position_embeddings",
              "token_type": "embeddings.token_type_embeddings", "norm": "embeddings.LayerNorm"}

BLOCK = {
    "attention.query": "attention.self.query", "attention.key": "attention.self.key",
    "attention.value": "attention.self.value", "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "mlp.wi": "intermediate.dense",
    "mlp.wo": "output.dense", "mlp_norm": "output.LayerNorm",
}


def body_names(cfg: ModelConfig) -> NameTable:
  """BERT-layout body keys (shared by BERT, RoBERTa, ELECTRA, SpanBERT)."""
  t = NameTable()
  t.embeddings(cfg, EMBEDDINGS)
  for i in range(cfg.num_blocks):
    t.block(f"encoder.layers.{i}", f"encoder.layer.{i}", BLOCK, cfg)
  if cfg.pooler:
    t.linear("encoder.pooler.dense", "pooler.dense")
  return t


def task_model_architecture(cfg: ModelConfig, prefix: str) -> tuple[str, bool] | None:
  """A task class keeps the pooler only when it classifies from it."""
  arch = task_architecture(cfg, prefix)
  if arch is None:
    return None
  return arch, cfg.pooler and cfg.task_head == "classifier" and cfg.classifier_pooling == "pooler"


def task_names(cfg: ModelConfig, t: NameTable, sequence_transform: str | None = None) -> None:
  """The BERT-lineage task heads: ``classifier`` (or RoBERTa/ELECTRA's ``classifier.dense`` +
  ``classifier.out_proj``) and ``qa_outputs``."""
  if cfg.task_head == "classifier" and sequence_transform:
    t.task_head(cfg, transform=f"{sequence_transform}.dense", output=f"{sequence_transform}.out_proj")
  elif cfg.task_head:
    t.task_head(cfg, output="qa_outputs" if cfg.task_head == "qa" else "classifier")


MLM_NAMES = {"transform": "cls.predictions.transform.dense",
             "norm": "cls.predictions.transform.LayerNorm", "bias": "cls.predictions.bias",
             "decoder": "cls.predictions.decoder"}


def weight_names(cfg):
  t = body_names(cfg)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, MLM_NAMES)
  if {"nsp", "sop"} & set(cfg.heads):
    t.linear("seq_relationship.dense", "cls.seq_relationship", body=False)
  task_names(cfg, t)
  return t


def architecture(cfg):
  if cfg.task_head:
    return task_model_architecture(cfg, "Bert")
  heads = set(cfg.heads)
  if {"mlm", "nsp"} <= heads:
    return "BertForPreTraining", True
  if "mlm" in heads:
    return "BertForMaskedLM", False
  if "nsp" in heads:
    return "BertForNextSentencePrediction", True
  return "BertModel", cfg.pooler


ADAPTER = HFAdapter(
    family="bert", hf_model_type="bert", hf_prefix="bert",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    weight_names=weight_names, architecture=architecture,
    head_keys={"mlm": "cls.predictions.bias", "nsp": "cls.seq_relationship.weight",
               "pooler": "pooler.dense.weight"},
    decoder_key="cls.predictions.decoder.weight", decoder_bias_key="cls.predictions.decoder.bias")
