"""ELECTRA replaced-token detection (google-research/electra run_pretraining.py).

The generator (a smaller body sharing all embeddings) fills the masked positions by sampling
its own MLM distribution with Gumbel noise under stop_gradient; the discriminator labels every
real token as original (0) or replaced (1) -- a sample equal to the original counts as
original. Loss = generator MLM + 50 x discriminator sigmoid cross-entropy. The data side masks
85% [MASK] / 15% unchanged, no random tokens (data.mask_token_prob=0.85, random_token_prob=0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.objectives.mlm import cross_entropy

AUC_BINS = 256
_EVAL_SAMPLING_KEY = 1234


def _scatter_rows(base: jax.Array, positions: jax.Array, values: jax.Array, where: jax.Array):
  """base[b, positions[b, p]] = values[b, p] where ``where[b, p]`` (per row)."""
  def one(row, pos, val, ok):
    return row.at[pos].set(jnp.where(ok, val, row[pos]))
  return jax.vmap(one)(base, positions, values, where)


class ElectraObjective:
  name = "electra"

  def __init__(self, disc_weight: float = 50.0, temperature: float = 1.0):
    self.disc_weight, self.temperature = disc_weight, temperature

  def totals(self, batch) -> dict[str, jax.Array]:
    return {"mlm": jnp.maximum(batch["masked_weights"].sum(), 1.0),
            "rtd": jnp.maximum(batch["padding_mask"].sum().astype(jnp.float32), 1.0)}

  def replace_tokens(self, model, batch, dropout_key):
    """The generator's pass: -> (its logits at the masked positions, the discriminator's input
    -- the batch with each masked position (weight > 0) replaced by a Gumbel-max sample of the
    generator, no gradient through the sample -- and the replaced labels: 1 where that input
    differs from the original token, 0 elsewhere, a sample equal to the original included)."""
    sample_key = (jax.random.PRNGKey(_EVAL_SAMPLING_KEY) if dropout_key is None
                  else jax.random.fold_in(dropout_key, 17))
    k_gen = None if dropout_key is None else jax.random.split(dropout_key)[0]
    labels, ok = batch["masked_ids"], batch["masked_weights"] > 0
    gen_logits = model.generator_logits(batch["input_ids"], masked_positions=batch["masked_positions"],
                                        dropout_key=k_gen, token_type_ids=batch["token_type_ids"],
                                        padding_mask=batch["padding_mask"],
                                        segment_ids=batch.get("segment_ids"))
    logits = jax.lax.stop_gradient(gen_logits).astype(jnp.float32) / self.temperature
    gumbel = jax.random.gumbel(sample_key, logits.shape, jnp.float32)
    sampled = jnp.argmax(logits + gumbel, axis=-1).astype(batch["input_ids"].dtype)
    disc_input = _scatter_rows(batch["input_ids"], batch["masked_positions"], sampled, ok)
    original = _scatter_rows(batch["input_ids"], batch["masked_positions"], labels, ok)
    return gen_logits, disc_input, (disc_input != original).astype(jnp.float32)

  def __call__(self, model, batch, dropout_key, totals):
    k_disc = None if dropout_key is None else jax.random.split(dropout_key)[1]
    common = dict(token_type_ids=batch["token_type_ids"], padding_mask=batch["padding_mask"],
                  segment_ids=batch.get("segment_ids"))
    w = batch["masked_weights"]
    labels = batch["masked_ids"]
    gen_logits, disc_input, replaced = self.replace_tokens(model, batch, dropout_key)
    gen_ce = cross_entropy(gen_logits, labels)
    real = batch["padding_mask"].astype(jnp.float32)
    disc_logits = model(disc_input, dropout_key=k_disc, **common).rtd_logits.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(disc_logits, replaced)
    # histogram of discriminator logits in [-8, 8] (probabilities clump early in training)
    bins = jnp.clip(((disc_logits + 8.0) / 16.0 * AUC_BINS).astype(jnp.int32), 0, AUC_BINS - 1)
    one_hot = jax.nn.one_hot(bins, AUC_BINS) * real[..., None]
    sums = {
        "mlm_loss": (gen_ce * w).sum(),
        "mlm_correct": ((jnp.argmax(gen_logits, -1) == labels) * w).sum(),
        "mlm_count": w.sum(),
        "rtd_loss": (bce * real).sum(),
        "rtd_correct": (((disc_logits > 0) == (replaced > 0)) * real).sum(),
        "rtd_count": real.sum(),
        "replaced": (replaced * real).sum(),
        "auc_pos": (one_hot * replaced[..., None]).sum((0, 1)),  # score histograms -> AUC
        "auc_neg": (one_hot * (1 - replaced)[..., None]).sum((0, 1)),
    }
    loss = sums["mlm_loss"] / totals["mlm"] + self.disc_weight * sums["rtd_loss"] / totals["rtd"]
    return loss, sums

  def finalize(self, sums: dict) -> dict[str, float]:
    pos, neg = np.asarray(sums["auc_pos"]), np.asarray(sums["auc_neg"])
    # P(score_pos > score_neg) from the histograms, ties counted half
    below = np.cumsum(neg) - neg
    auc = float((pos * (below + 0.5 * neg)).sum() / max(pos.sum() * neg.sum(), 1.0))
    m = {"mlm_loss": float(sums["mlm_loss"]) / max(float(sums["mlm_count"]), 1.0),
         "mlm_accuracy": float(sums["mlm_correct"]) / max(float(sums["mlm_count"]), 1.0),
         "rtd_loss": float(sums["rtd_loss"]) / max(float(sums["rtd_count"]), 1.0),
         "rtd_accuracy": float(sums["rtd_correct"]) / max(float(sums["rtd_count"]), 1.0),
         "rtd_auc": auc,
         "replaced_fraction": float(sums["replaced"]) / max(float(sums["rtd_count"]), 1.0)}
    m["loss"] = m["mlm_loss"] + self.disc_weight * m["rtd_loss"]
    return m
