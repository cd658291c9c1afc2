"""Masked LM (+ NSP / SOP when the model has that head): BERT's pretraining loss.

MLM = sum(w * CE) / sum(w) over predicted positions (logits only there); NSP/SOP = mean CE over
rows with a label. Total = MLM + NSP (google-research/bert run_pretraining.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  return logz - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


class MlmObjective:
  name = "mlm"

  def totals(self, batch) -> dict[str, jax.Array]:
    labelled = (batch["seq_relationship_label"] >= 0).sum().astype(jnp.float32)
    totals = {"mlm": jnp.maximum(batch["masked_weights"].sum(), 1.0),
              "nsp": jnp.maximum(labelled, 1.0)}
    if "sbo_weights" in batch:
      totals["sbo"] = jnp.maximum(batch["sbo_weights"].sum(), 1.0)
    return totals

  def __call__(self, model, batch, dropout_key, totals):
    out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                padding_mask=batch["padding_mask"], segment_ids=batch.get("segment_ids"),
                masked_positions=batch["masked_positions"], dropout_key=dropout_key)
    w = batch["masked_weights"]
    labels = batch["masked_ids"]
    ce = cross_entropy(out.mlm_logits, labels)
    sums = {
        "mlm_loss": (ce * w).sum(),
        "mlm_correct": ((jnp.argmax(out.mlm_logits, -1) == labels) * w).sum(),
        "mlm_count": w.sum(),
    }
    loss = sums["mlm_loss"] / totals["mlm"]
    if out.seq_relationship_logits is not None:
      label = batch["seq_relationship_label"]
      valid = (label >= 0).astype(jnp.float32)
      nsp_ce = cross_entropy(out.seq_relationship_logits, jnp.maximum(label, 0))
      sums["nsp_loss"] = (nsp_ce * valid).sum()
      sums["nsp_correct"] = ((jnp.argmax(out.seq_relationship_logits, -1) == label) * valid).sum()
      sums["nsp_count"] = valid.sum()
      loss = loss + sums["nsp_loss"] / totals["nsp"]
    if getattr(model, "sbo", None) is not None and "sbo_weights" in batch:
      # SpanBERT: MLM_sum / tokens + SBO_sum / span tokens (criterions/spanbert_loss.py)
      sbo_logits = model.sbo(out.last_hidden_state, model.encoder.embeddings.word,
                             batch["sbo_left"], batch["sbo_right"], batch["sbo_relative"])
      sw = batch["sbo_weights"]
      sums["sbo_loss"] = (cross_entropy(sbo_logits, labels) * sw).sum()
      sums["sbo_correct"] = ((jnp.argmax(sbo_logits, -1) == labels) * sw).sum()
      sums["sbo_count"] = sw.sum()
      loss = loss + sums["sbo_loss"] / totals["sbo"]
    return loss, sums

  @staticmethod
  def finalize(sums: dict) -> dict[str, float]:
    s = {k: float(v) for k, v in sums.items() if k.startswith(("mlm_", "nsp_", "sbo_"))}
    m = {"mlm_loss": s["mlm_loss"] / max(s["mlm_count"], 1.0),
         "mlm_accuracy": s["mlm_correct"] / max(s["mlm_count"], 1.0)}
    if "nsp_count" in s:
      m["nsp_loss"] = s["nsp_loss"] / max(s["nsp_count"], 1.0)
      m["nsp_accuracy"] = s["nsp_correct"] / max(s["nsp_count"], 1.0)
    if "sbo_count" in s:
      m["sbo_loss"] = s["sbo_loss"] / max(s["sbo_count"], 1.0)
      m["sbo_accuracy"] = s["sbo_correct"] / max(s["sbo_count"], 1.0)
    m["loss"] = m["mlm_loss"] + m.get("nsp_loss", 0.0) + m.get("sbo_loss", 0.0)
    return m
