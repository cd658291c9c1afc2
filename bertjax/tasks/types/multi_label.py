"""``task: multi_label``: a set of labels per text (topics, toxicity kinds).

The classifier head scores every label independently; the loss is BCE-with-logits averaged over
all label slots, as transformers' ``multi_label_classification``; a label is predicted when its
probability is above 0.5. Dev metrics: micro and macro F1, and exact match (rows whose whole set
is right). A CSV/TSV label cell holds the set as one string split by ``data.label_separator``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from bertjax.tasks import metrics as M
from bertjax.tasks.formats import TaskDataError, shown
from bertjax.tasks.types.classification import SequenceTask


class MultiLabel(SequenceTask):
  name = "multi_label"
  problem_type = "multi_label"
  metrics = ("f1_micro", "f1_macro", "accuracy")

  def parse_label(self, raw, where, data):
    if isinstance(raw, str):  # "" is the empty set
      raw = [x.strip() for x in raw.split(data.label_separator) if x.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, (str, int)) for x in raw):
      raise TaskDataError(f"{where}: {data.label_field}={shown(raw)} is not a list of labels")
    return [str(x) for x in raw]

  def labels_of(self, example):
    return example["label"] or []

  def label_array(self, examples, labels):
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(examples), len(labels)), np.float32)  # multi-hot
    for row, ex in enumerate(examples):
      for name in ex["label"] or ():
        out[row, index[name]] = 1.0
    return out

  def evaluate(self, split, logits, cfg, labels, *, tune_threshold=False, threshold=None):
    probs = 1.0 / (1.0 + np.exp(-logits))
    preds = [{"text": ex["text"], "labels": [labels[j] for j in np.flatnonzero(p > 0.5)],
              "probabilities": dict(zip(labels, map(float, p)))}
             for ex, p in zip(split.examples, probs)]
    labelled = all(ex["label"] is not None for ex in split.examples)  # [] is a label set
    return (M.multi_label_metrics(logits, split.arrays["label"]) if labelled else {}), preds

  def loss_count(self, batch):
    return batch["label"].size

  def loss(self, logits, batch):  # BCE averaged over label slots; exact match over rows
    label = batch["label"]
    return {"task_loss": optax.sigmoid_binary_cross_entropy(logits, label).sum(),
            "task_correct": jnp.all((logits > 0) == (label > 0.5), axis=-1).sum(),
            "task_count": jnp.asarray(label.size), "task_rows": jnp.asarray(label.shape[0])}

  def finalize(self, sums):
    count = max(float(sums["task_count"]), 1.0)
    return {"loss": float(sums["task_loss"]) / count,  # rows whose whole label set is right:
            "exact_match": float(sums["task_correct"]) / max(float(sums["task_rows"]), 1.0)}


TYPE = MultiLabel()
