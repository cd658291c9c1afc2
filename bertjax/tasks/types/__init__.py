"""The fine-tuning task types, one module each, found here by name (``task:`` in a task YAML).

Adding a type: a module in this package with a ``TaskType`` (``HeadTask`` for a task head on
labeled examples) and its line below.
"""

from __future__ import annotations

from bertjax.config import ConfigError, FinetuneConfig, ModelConfig
from bertjax.tasks.types import (classification, multi_label, qa, regression,
                                 sentence_embedding, token_classification)
from bertjax.tasks.types.base import HeadTask, TaskType

TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    classification.TYPE, multi_label.TYPE, regression.TYPE, token_classification.TYPE, qa.TYPE,
    sentence_embedding.TYPE)}

__all__ = ["TASK_TYPES", "HeadTask", "TaskType", "of_model", "resolve", "task_type"]


def task_type(name: str) -> TaskType:
  try:
    return TASK_TYPES[name]
  except KeyError:
    raise ConfigError(f"task={name!r} is not a task type; choose from "
                      f"{', '.join(TASK_TYPES)}") from None


def resolve(cfg: FinetuneConfig) -> TaskType:
  """``cfg.task``'s type, with the config checked against it (``train.metric`` included)."""
  task = task_type(cfg.task)
  task.check(cfg)
  if cfg.train.metric is not None and cfg.train.metric not in task.metrics:
    raise ConfigError(f"train.metric={cfg.train.metric!r} is not a {task.name} metric; choose "
                      f"from {', '.join(task.metrics)}")
  return task


def of_model(model_cfg: ModelConfig) -> HeadTask:
  """The task type a fine-tuned model was trained for, from its head (and problem type)."""
  if model_cfg.task_head is None and model_cfg.sentence_pooling:
    raise ConfigError("this is a sentence-embedding model: bertjax embed gives its vectors, "
                      "bertjax evaluate scores it on a BEIR folder, an STS or a pairs file")
  if model_cfg.task_head is None:
    raise ConfigError("this model has no task head; fine-tune it first (bertjax finetune)")
  same_head = [t for t in TASK_TYPES.values() if t.head == model_cfg.task_head]
  return next((t for t in same_head if t.problem_type == model_cfg.problem_type), same_head[0])
