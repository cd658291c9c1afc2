"""``task: regression``: a score per text or text pair (STS-B similarity, ratings).

The classifier head with one output; mean squared error as transformers' ``regression``
problem type (unlabelled rows, NaN, ignored). Dev metrics: Pearson, Spearman, MSE (lower is
better).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bertjax.tasks import metrics as M
from bertjax.tasks.formats import TaskDataError, shown
from bertjax.tasks.types.classification import SequenceTask


class Regression(SequenceTask):
  name = "regression"
  problem_type = "regression"
  metrics = ("pearson", "spearman", "mse")
  minimize = ("mse",)
  has_label_set = False

  def num_labels(self, labels):
    return 1

  def parse_label(self, raw, where, data):
    if raw == "":
      return None
    try:
      value = float(raw)
    except (TypeError, ValueError):
      value = float("nan")
    if isinstance(raw, bool) or value != value:
      raise TaskDataError(f"{where}: {data.label_field}={shown(raw)} is not a number")
    return value

  def label_array(self, examples, labels):
    return np.array([np.nan if ex["label"] is None else ex["label"] for ex in examples],
                    np.float32)

  def evaluate(self, split, logits, cfg, labels, *, tune_threshold=False, threshold=None):
    gold, scores = split.arrays["label"], logits[..., 0]
    preds = [{"text": ex["text"], "score": float(s)} for ex, s in zip(split.examples, scores)]
    return (M.regression_metrics(scores, gold) if not np.isnan(gold).any() else {}), preds

  def loss_count(self, batch):
    return jnp.sum(~jnp.isnan(batch["label"]))

  def loss(self, logits, batch):
    label = batch["label"]
    valid = ~jnp.isnan(label)
    err = jnp.where(valid, logits[..., 0] - jnp.where(valid, label, 0.0), 0.0)
    return {"task_loss": jnp.sum(err * err), "task_correct": jnp.zeros(()),
            "task_count": valid.sum()}

  def finalize(self, sums):
    return {"loss": float(sums["task_loss"]) / max(float(sums["task_count"]), 1.0)}


TYPE = Regression()
