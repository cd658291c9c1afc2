"""``task: classification``: one label per text or text pair (sentiment, NLI, paraphrase).

A classifier head on the pooled sequence; softmax cross-entropy as transformers'
``*ForSequenceClassification`` (rows without a label, -100, ignored); dev metrics accuracy,
F1 (binary: the second label is positive), macro F1 and Matthews correlation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bertjax.objectives.mlm import cross_entropy
from bertjax.tasks import metrics as M
from bertjax.tasks.data import SplitData
from bertjax.tasks.features import IGNORE, sequence_features
from bertjax.tasks.formats import TaskDataError, shown, text_example
from bertjax.tasks.types.base import HeadTask


class SequenceTask(HeadTask):
  """A head on the pooled sequence, one label per text (pair): what the sequence-level types
  share. ``parse_label`` and ``label_array`` give the label its type's form."""

  head = "classifier"

  def example(self, item, path, index, data):
    return text_example(item, path, data, self.parse_label)

  def parse_label(self, raw, where: str, data) -> object:
    """A row's raw label -> the example's label (None: unlabelled)."""
    if raw == "":
      return None
    if not isinstance(raw, (str, int)):  # bool is an int
      raise TaskDataError(f"{where}: {data.label_field}={shown(raw)} is not a label (a string "
                          "or an integer)")
    return str(raw)

  def label_array(self, examples: list[dict], labels: tuple[str, ...]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    return np.array([IGNORE if ex["label"] is None else index[ex["label"]] for ex in examples],
                    np.int32)

  def split(self, name, examples, cfg, tokenizer, labels):
    arrays = sequence_features(examples, tokenizer, cfg.data.max_seq_length)
    arrays["label"] = self.label_array(examples, labels)
    return SplitData(name, examples, arrays)


def label_cross_entropy(logits, label) -> dict:
  """Cross-entropy sums where ``label >= 0`` (per row or per token)."""
  valid = label >= 0
  ce = cross_entropy(logits, jnp.maximum(label, 0))
  return {"task_loss": jnp.where(valid, ce, 0.0).sum(),
          "task_correct": ((jnp.argmax(logits, -1) == label) & valid).sum(),
          "task_count": valid.sum()}


class Classification(SequenceTask):
  name = "classification"
  metrics = ("accuracy", "f1", "f1_macro", "mcc")

  def labels_of(self, example):
    return [example["label"]]

  def evaluate(self, split, logits, cfg, labels, *, tune_threshold=False, threshold=None):
    gold = split.arrays["label"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    preds = [{"text": ex["text"], "label": labels[int(np.argmax(p))],
              "probabilities": dict(zip(labels, map(float, p)))}
             for ex, p in zip(split.examples, probs)]
    labelled = gold >= 0
    metrics = (M.classification_metrics(logits[labelled], gold[labelled], labels)
               if labelled.all() else {})
    return metrics, preds

  def loss_count(self, batch):
    return jnp.sum(batch["label"] >= 0)

  def loss(self, logits, batch):
    return label_cross_entropy(logits, batch["label"])


TYPE = Classification()
