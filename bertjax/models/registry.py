"""The family registry: defaults and Hugging Face mapping for each family, by name."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bertjax.config import ConfigError, ModelConfig
from bertjax.interop.names import NameTable


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  defaults: dict[str, Any]  # ModelConfig values that define the family
  hf_model_type: str
  hf_prefix: str  # body prefix inside HF task models ("bert", "roberta", ...)
  config_from_hf: Callable[[dict], dict]  # HF config.json -> ModelConfig fields
  config_to_hf: Callable[[ModelConfig], dict]
  weight_names: Callable[[ModelConfig], NameTable]
  architecture: Callable[[ModelConfig], tuple[str, bool]]  # -> (HF class, keeps the pooler)
  # HF key (prefix-stripped) whose presence means the checkpoint has that head.
  head_keys: dict[str, str]
  decoder_key: str | None = None  # tied MLM decoder weight, dropped when tied
  decoder_bias_key: str | None = None  # HF's duplicate of the MLM output bias


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
  _FAMILIES[family.name] = family
  return family


def get_family(name: str) -> Family:
  try:
    return _FAMILIES[name]
  except KeyError:
    raise ConfigError(f"unknown model.family {name!r}; known: {', '.join(sorted(_FAMILIES))}") \
        from None


def family_for_model_type(model_type: str) -> Family:
  for fam in _FAMILIES.values():
    if fam.hf_model_type == model_type and fam.name == fam.hf_model_type:
      return fam
  raise ConfigError(f"config.json model_type {model_type!r} is not supported; supported: "
                    f"{', '.join(sorted({f.hf_model_type for f in _FAMILIES.values()}))}")


def family_defaults(name: str) -> dict[str, Any]:
  return dict(get_family(name).defaults, family=name)


def families() -> list[str]:
  return sorted(_FAMILIES)


# ---------------------------------------------------------------------------------------------
# Shared HF config vocabulary of the BERT lineage.

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu",
                "tanh": "tanh"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu",
              "tanh": "tanh"}


def act_from_hf(name: str, field: str = "hidden_act") -> str:
  try:
    return _ACT_FROM_HF[name]
  except KeyError:
    raise ConfigError(f"config.json {field}={name!r} is not supported; "
                      f"supported: {sorted(_ACT_FROM_HF)}") from None


def act_to_hf(name: str) -> str:
  return _ACT_TO_HF[name]


def bert_config_from_hf(d: dict) -> dict:
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


def bert_config_to_hf(cfg: ModelConfig) -> dict:
  return dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      hidden_act=act_to_hf(cfg.hidden_act), max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, pad_token_id=cfg.pad_token_id,
      layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.hidden_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout,
      initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_word_embeddings,
      position_embedding_type="absolute", classifier_dropout=cfg.classifier_dropout)


BERT_EMBEDDINGS = {"word": "embeddings.word_embeddings",
                   "position": "embeddings.position_embeddings",
                   "token_type": "embeddings.token_type_embeddings", "norm": "embeddings.LayerNorm"}

BERT_BLOCK = {
    "attention.query": "attention.self.query", "attention.key": "attention.self.key",
    "attention.value": "attention.self.value", "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "mlp.wi": "intermediate.dense",
    "mlp.wo": "output.dense", "mlp_norm": "output.LayerNorm",
}


def bert_body_names(cfg: ModelConfig) -> NameTable:
  """BERT-layout body keys (shared by BERT, RoBERTa, ELECTRA, SpanBERT)."""
  t = NameTable()
  t.embeddings(cfg, BERT_EMBEDDINGS)
  for i in range(cfg.num_blocks):
    t.block(f"encoder.layers.{i}", f"encoder.layer.{i}", BERT_BLOCK, cfg)
  if cfg.pooler:
    t.linear("encoder.pooler.dense", "pooler.dense")
  return t


def bert_architecture(cfg: ModelConfig, prefix: str) -> tuple[str, bool] | None:
  """A task class keeps the pooler only when it classifies from it."""
  arch = task_architecture(cfg, prefix)
  if arch is None:
    return None
  return arch, cfg.pooler and cfg.task_head == "classifier" and cfg.classifier_pooling == "pooler"


# ---------------------------------------------------------------------------------------------
# Fine-tuning heads: transformers' task classes and their config vocabulary.

TASK_CLASS_SUFFIX = {"classifier": "ForSequenceClassification",
                     "token_classifier": "ForTokenClassification", "qa": "ForQuestionAnswering"}
_PROBLEM_TO_HF = {"single_label": "single_label_classification",
                  "multi_label": "multi_label_classification", "regression": "regression"}
_PROBLEM_FROM_HF = {v: k for k, v in _PROBLEM_TO_HF.items()}


def task_architecture(cfg: ModelConfig, class_prefix: str) -> str | None:
  """``BertForSequenceClassification`` etc. for a model with a task head, else None."""
  return class_prefix + TASK_CLASS_SUFFIX[cfg.task_head] if cfg.task_head else None


def task_config_from_hf(d: dict) -> dict:
  """The task head an HF config.json's ``architectures`` names, with its labels."""
  arch = (d.get("architectures") or [""])[0]
  kind = next((k for k, suffix in TASK_CLASS_SUFFIX.items() if arch.endswith(suffix)), None)
  if kind is None:
    return {}
  id2label = d.get("id2label") or {}
  num_labels = len(id2label) or int(d.get("num_labels", 2))
  names = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels))
  fields = dict(heads=(kind,), num_labels=num_labels)
  if names != tuple(f"LABEL_{i}" for i in range(num_labels)):
    fields["labels"] = names
  problem = d.get("problem_type")
  if kind == "classifier":
    fields["problem_type"] = (_PROBLEM_FROM_HF[problem] if problem in _PROBLEM_FROM_HF
                              else "regression" if num_labels == 1 else "single_label")
  return fields


def task_config_to_hf(cfg: ModelConfig) -> dict:
  if not cfg.task_head:
    return {}
  names = cfg.label_names
  out = dict(id2label={str(i): n for i, n in enumerate(names)},
             label2id={n: i for i, n in enumerate(names)})
  if cfg.task_head == "classifier":
    out["problem_type"] = _PROBLEM_TO_HF[cfg.problem_type]
  return out


def bert_task_names(cfg: ModelConfig, t: NameTable, sequence_transform: str | None = None) -> None:
  """The BERT-lineage task heads: ``classifier`` (or RoBERTa/ELECTRA's ``classifier.dense`` +
  ``classifier.out_proj``) and ``qa_outputs``."""
  if cfg.task_head == "classifier" and sequence_transform:
    t.task_head(cfg, transform=f"{sequence_transform}.dense", output=f"{sequence_transform}.out_proj")
  elif cfg.task_head:
    t.task_head(cfg, output="qa_outputs" if cfg.task_head == "qa" else "classifier")
