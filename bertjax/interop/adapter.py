"""A family's Hugging Face adapter: its model type, config.json mapping both ways, weight
names, task classes; and the HF config vocabulary every family shares (activations, task
heads and their labels)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from bertjax.config import ConfigError, ModelConfig
from bertjax.interop.names import NameTable


@dataclasses.dataclass(frozen=True)
class HFAdapter:
  family: str
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


# ---------------------------------------------------------------------------------------------
# Shared HF config vocabulary.

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
