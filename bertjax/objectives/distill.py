"""DistilBERT distillation (Sanh et al. 2019; transformers distillation/distiller.py):

  L = alpha_ce * KL(softmax(t / T) || softmax(s / T)) * T^2      (every real token)
    + alpha_mlm * CE(s, masked ids)                                (masked positions)
    + alpha_cos * (1 - cos(h_s, h_t))                              (every real token)

The teacher runs in the same jitted step from frozen parameters, without gradients. The student
starts from teacher layers [0, 2, 4, 7, 9, 11] (``student_from_teacher``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.config import DistillConfig, ModelConfig, family_defaults, from_dict
from bertjax.heads import gather_positions
from bertjax.objectives.mlm import cross_entropy


def student_config(teacher: ModelConfig, layers) -> ModelConfig:
  """A DistilBERT with the teacher's width and the chosen number of layers."""
  fields = dict(family_defaults("distilbert"), vocab_size=teacher.vocab_size,
                hidden_size=teacher.hidden_size, num_heads=teacher.num_heads,
                intermediate_size=teacher.intermediate_size, num_layers=len(layers),
                hidden_act=teacher.hidden_act, max_position_embeddings=teacher.max_position_embeddings,
                pad_token_id=teacher.pad_token_id, norm_eps=teacher.norm_eps,
                tie_word_embeddings=teacher.tie_word_embeddings)
  return from_dict(ModelConfig, fields)


def student_from_teacher(teacher_flat: dict, layers, student_keys) -> dict:
  """Student parameters: word/position embeddings and their norm, teacher layer layers[i] as
  student layer i, and the MLM head (extract_distilbert.py). Token types and pooler are dropped."""
  out = {}
  for key in student_keys:
    if key.startswith("encoder.layers."):
      _, _, i, rest = key.split(".", 3)
      out[key] = teacher_flat[f"encoder.layers.{layers[int(i)]}.{rest}"]
    else:
      out[key] = teacher_flat[key]
  return out


class DistillObjective:
  name = "distill"

  def __init__(self, teacher_graphdef, cfg: DistillConfig):
    self.teacher_graphdef, self.cfg = teacher_graphdef, cfg

  def totals(self, batch):
    return {"mlm": jnp.maximum(batch["masked_weights"].sum(), 1.0),
            "tokens": jnp.maximum(batch["padding_mask"].sum().astype(jnp.float32), 1.0)}

  def __call__(self, model, batch, dropout_key, totals, frozen):
    teacher = nnx.merge(self.teacher_graphdef, frozen)
    kw = dict(padding_mask=batch["padding_mask"], segment_ids=batch.get("segment_ids"))
    t = teacher(batch["input_ids"], token_type_ids=jnp.zeros_like(batch["input_ids"]), **kw)
    s = model(batch["input_ids"], dropout_key=dropout_key, **kw)
    real = batch["padding_mask"].astype(jnp.float32)
    temp = self.cfg.temperature
    t_logp = jax.nn.log_softmax(t.mlm_logits.astype(jnp.float32) / temp)
    s_logp = jax.nn.log_softmax(s.mlm_logits.astype(jnp.float32) / temp)
    kl = (jnp.exp(t_logp) * (t_logp - s_logp)).sum(-1)  # [batch, len]
    hs, ht = s.last_hidden_state.astype(jnp.float32), t.last_hidden_state.astype(jnp.float32)
    cos = (hs * ht).sum(-1) / jnp.maximum(
        jnp.linalg.norm(hs, axis=-1) * jnp.linalg.norm(ht, axis=-1), 1e-8)
    w, labels = batch["masked_weights"], batch["masked_ids"]
    masked_logits = gather_positions(s.mlm_logits, batch["masked_positions"])
    mlm = cross_entropy(masked_logits, labels)
    sums = {"ce_loss": (kl * real).sum() * temp**2, "cos_loss": ((1.0 - cos) * real).sum(),
            "tokens": real.sum(), "mlm_loss": (mlm * w).sum(),
            "mlm_correct": ((jnp.argmax(masked_logits, -1) == labels) * w).sum(),
            "mlm_count": w.sum()}
    c = self.cfg
    loss = (c.alpha_ce * sums["ce_loss"] / totals["tokens"] + c.alpha_mlm * sums["mlm_loss"] / totals["mlm"]
            + c.alpha_cos * sums["cos_loss"] / totals["tokens"])
    return loss, sums

  def finalize(self, sums: dict) -> dict[str, float]:
    f = {k: float(v) for k, v in sums.items()}
    m = {"ce_loss": f["ce_loss"] / max(f["tokens"], 1.0),
         "cos_loss": f["cos_loss"] / max(f["tokens"], 1.0),
         "mlm_loss": f["mlm_loss"] / max(f["mlm_count"], 1.0),
         "mlm_accuracy": f["mlm_correct"] / max(f["mlm_count"], 1.0)}
    c = self.cfg
    m["loss"] = c.alpha_ce * m["ce_loss"] + c.alpha_mlm * m["mlm_loss"] + c.alpha_cos * m["cos_loss"]
    return m


__all__ = ["DistillObjective", "student_config", "student_from_teacher"]
