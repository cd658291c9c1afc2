"""The loss of a fine-tuning task type on its head's logits, as an objective of the shared
engine. What the loss is lives with the type (``tasks/types/``: cross-entropy, BCE, MSE, QA's
start/end); this adapts it to the engine's ``totals`` / ``__call__`` / ``finalize``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class TaskObjective:
  """``task``: a ``HeadTask`` (its ``loss_count``, ``loss`` and ``finalize``)."""

  def __init__(self, task):
    self.task = task

  def totals(self, batch) -> dict[str, jax.Array]:
    """Whole-batch normalisers (so accumulated microbatches equal the full batch)."""
    return {"task": jnp.maximum(jnp.asarray(self.task.loss_count(batch), jnp.float32), 1.0)}

  def __call__(self, model, batch, dropout_key, totals):
    logits = model(batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                   padding_mask=batch["padding_mask"], dropout_key=dropout_key).task_logits
    sums = {k: jnp.asarray(v, jnp.float32)
            for k, v in self.task.loss(logits.astype(jnp.float32), batch).items()}
    return sums["task_loss"] / totals["task"], sums

  def finalize(self, sums: dict) -> dict[str, float]:
    return self.task.finalize(sums)
