"""Fine-tuning losses on the task head's logits, as transformers' task models compute them:
cross-entropy (single label, tokens with label -100 ignored), BCE-with-logits averaged over all
labels (multi-label), MSE (regression), and (CE(start) + CE(end)) / 2 for extractive QA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bertjax.objectives.mlm import cross_entropy


def _model_out(model, batch, dropout_key):
  return model(batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
               padding_mask=batch["padding_mask"], dropout_key=dropout_key).task_logits


class TaskObjective:
  """``task``: classification | multi_label | regression | token_classification | qa."""

  def __init__(self, task: str):
    self.task = task

  def totals(self, batch) -> dict[str, jax.Array]:
    """Whole-batch normalisers (so accumulated microbatches equal the full batch)."""
    if self.task == "qa":
      n = jnp.asarray(batch["start_position"].shape[0], jnp.float32)
    elif self.task == "multi_label":
      n = jnp.asarray(batch["label"].size, jnp.float32)
    elif self.task == "regression":
      n = jnp.sum(~jnp.isnan(batch["label"])).astype(jnp.float32)
    else:
      n = jnp.sum(batch["label"] >= 0).astype(jnp.float32)
    return {"task": jnp.maximum(n, 1.0)}

  def __call__(self, model, batch, dropout_key, totals):
    logits = _model_out(model, batch, dropout_key).astype(jnp.float32)
    if self.task == "qa":
      loss_sum = 0.5 * (cross_entropy(logits[..., 0], batch["start_position"]) +
                        cross_entropy(logits[..., 1], batch["end_position"])).sum()
      correct = ((jnp.argmax(logits[..., 0], -1) == batch["start_position"]) &
                 (jnp.argmax(logits[..., 1], -1) == batch["end_position"])).sum()
      count = jnp.asarray(logits.shape[0], jnp.float32)
    elif self.task == "multi_label":  # BCE averaged over label slots; exact match over rows
      label = batch["label"]
      loss_sum = optax.sigmoid_binary_cross_entropy(logits, label).sum()
      correct = jnp.all((logits > 0) == (label > 0.5), axis=-1).sum()
      count = jnp.asarray(label.size, jnp.float32)
      rows = jnp.asarray(label.shape[0], jnp.float32)
    elif self.task == "regression":
      label = batch["label"]
      valid = ~jnp.isnan(label)
      err = jnp.where(valid, logits[..., 0] - jnp.where(valid, label, 0.0), 0.0)
      loss_sum = jnp.sum(err * err)
      correct = jnp.zeros((), jnp.float32)
      count = valid.sum().astype(jnp.float32)
    else:  # classification, token_classification: CE where label >= 0
      label = batch["label"]
      valid = label >= 0
      ce = cross_entropy(logits, jnp.maximum(label, 0))
      loss_sum = jnp.where(valid, ce, 0.0).sum()
      correct = ((jnp.argmax(logits, -1) == label) & valid).sum()
      count = valid.sum().astype(jnp.float32)
    sums = {"task_loss": loss_sum, "task_correct": correct.astype(jnp.float32),
            "task_count": count}
    if self.task == "multi_label":
      sums["task_rows"] = rows
    return loss_sum / totals["task"], sums

  def finalize(self, sums: dict) -> dict[str, float]:
    count = max(float(sums["task_count"]), 1.0)
    out = {"loss": float(sums["task_loss"]) / count}
    if self.task == "multi_label":  # rows whose whole label set is right
      out["exact_match"] = float(sums["task_correct"]) / max(float(sums["task_rows"]), 1.0)
    elif self.task != "regression":
      out["accuracy"] = float(sums["task_correct"]) / count
    return out
