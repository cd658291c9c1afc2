"""What a fine-tuning task type is: ``TaskType``, and ``HeadTask`` for the types that train a
task head on labeled examples.

A ``HeadTask`` says which head the model carries, how a row of a data file becomes an
example, how examples become arrays, the loss on the head's logits, and how logits become
predictions and metrics. Each type is one module of this package; ``bertjax.tasks.types`` finds
them by name, so adding a type is a module here and a line in that registry.
"""

from __future__ import annotations

import abc

import jax
import numpy as np

from bertjax.config import FinetuneConfig, TaskDataConfig
from bertjax.data.tokenizer import Tokenizer
from bertjax.tasks import supervised
from bertjax.tasks.data import MODEL_INPUTS, SplitData


class TaskType(abc.ABC):
  """A task type: its name, its dev metrics and how a run of it trains."""

  name: str = ""
  head: str | None = None  # the model's task head (config.model.TASK_HEADS); None: a bare body
  problem_type: str = "single_label"  # the task head's problem type (a classifier's)
  metrics: tuple[str, ...] = ()  # dev metrics; the first picks the best checkpoint by default
  minimize: tuple[str, ...] = ()  # the metrics where lower is better

  def __repr__(self) -> str:
    return f"TaskType({self.name})"

  def check(self, cfg: FinetuneConfig) -> None:
    """Config checks of this type beyond the schema's (before anything is read)."""

  def metric(self, cfg: FinetuneConfig) -> str:
    """The dev metric that picks the best checkpoint: ``train.metric`` or the type's main one."""
    return cfg.train.metric or self.metrics[0]

  @abc.abstractmethod
  def train(self, cfg: FinetuneConfig, **run) -> dict:
    """Fine-tune once per seed (``tasks.finetune.finetune``'s keyword arguments)."""


class HeadTask(TaskType):
  """A task head trained on labeled examples (``tasks/supervised.py``)."""

  label_key: str | None = "label"  # the example field holding gold labels (its data.*_field)
  has_label_set: bool = True  # labels are names from a set (class ids in the head)
  per_token: bool = False  # the head scores every token, not the row
  file_readers: dict = {}  # whole-file formats only this type reads: data.format -> reader(path)

  def train(self, cfg: FinetuneConfig, **run) -> dict:
    return supervised.finetune_head(cfg, self, **run)

  def num_labels(self, labels: tuple[str, ...]) -> int:
    return len(labels)

  @property
  def per_token_keys(self) -> tuple[str, ...]:
    """The training arrays with a length axis (cut to a batch's bucket)."""
    return MODEL_INPUTS

  def labels_of(self, example: dict) -> list:
    """The label-set names an example uses (None entries: unlabelled)."""
    return []

  @abc.abstractmethod
  def example(self, item: tuple[int, dict], path: str, index: int,
              data: TaskDataConfig) -> dict:
    """One ``(line, {field: value})`` row of ``path`` -> an example (errors name the line)."""

  @abc.abstractmethod
  def split(self, name: str, examples: list[dict], cfg: FinetuneConfig, tokenizer: Tokenizer,
            labels: tuple[str, ...]) -> SplitData:
    """Examples -> model inputs and targets, one row per feature."""

  def has_labels(self, split: SplitData) -> bool:
    """Whether the split can be scored: every example labelled."""
    return all(ex[self.label_key] is not None for ex in split.examples)

  @abc.abstractmethod
  def evaluate(self, split: SplitData, logits: np.ndarray, cfg: FinetuneConfig,
               labels: tuple[str, ...], *, tune_threshold: bool = False,
               threshold: float | None = None) -> tuple[dict, list[dict]]:
    """Logits -> (metrics, one prediction dict per example); no metrics when unlabelled."""

  @abc.abstractmethod
  def loss_count(self, batch: dict) -> jax.Array:
    """The whole batch's loss normaliser (so accumulated microbatches equal the batch)."""

  @abc.abstractmethod
  def loss(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Sums over the batch: ``task_loss``, ``task_correct``, ``task_count`` (+ extras)."""

  def finalize(self, sums: dict) -> dict[str, float]:
    """Summed training metrics -> the logged ones."""
    count = max(float(sums["task_count"]), 1.0)
    return {"loss": float(sums["task_loss"]) / count,
            "accuracy": float(sums["task_correct"]) / count}
