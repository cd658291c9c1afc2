"""Contrastive sentence-embedding training with in-batch negatives: InfoNCE, as
sentence-transformers' ``MultipleNegativesRankingLoss`` computes it.

For anchors a_i, positives p_i and optional hard negatives n_i (i over the **global** batch):
``s(x, y) = scale * cos(x, y)`` (scale 20 = temperature 0.05) and

- the standard loss: ``mean_i [ logsumexp_j s(a_i, c_j) - s(a_i, p_i) ]`` over the candidates
  ``c = [p_1..p_B, n_1..n_B]``;
- the symmetric loss (``MultipleNegativesSymmetricRankingLoss``, ``partition_mode='per_direction'``):
  ``mean_i [ (logsumexp_j s(a_i, c_j) + logsumexp_j s(a_j, p_i)) / 2 - s(a_i, p_i) ]``.

**The negatives are the whole global batch.** The step is one SPMD program over the global
batch: the anchors stay sharded by rows over the data-parallel mesh axes (``batch`` -> ``data``,
``fsdp``), the candidate embeddings ``[B(1+k), hidden]`` are constrained to be replicated -- one
all-gather of a few KB per row -- and every device scores its own anchors against every
candidate, so its score rows are ``[B/devices, B(1+k)]``. Gradients flow back through the
all-gather (its transpose is a reduce-scatter), which is what sentence-transformers'
``gather_across_devices=True`` does by hand with ``all_gather_with_grad``.

**Cached gradients (GradCache, Gao et al. 2021).** With ``chunk=c`` each column is embedded in
chunks of ``c`` rows under ``jax.checkpoint`` inside a ``lax.map``: the forward keeps only the
``[B, hidden]`` embeddings, the backward recomputes one chunk's activations at a time and
backpropagates the loss's gradient with respect to that chunk's embeddings -- GradCache's two
passes, derived by autodiff. The loss, and so its gradients, are those of the whole batch: a
batch larger than activation memory still uses all of its negatives. Chunk k holds rows
``{k, k + B/c, ...}``, so every device works on every chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax import sharding

POOLINGS = ("mean", "cls")
COLUMNS = ("anchor", "positive", "negative")


def pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
  """[B, L, H] hidden states -> [B, H]: the masked mean of the tokens, or the first token."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    return hidden[:, 0]
  m = mask[..., None].astype(jnp.float32)
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit length (torch.nn.functional.normalize: eps 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed(model, ids: jax.Array, mask: jax.Array, *, pooling: str = "mean",
          dropout_key=None, chunk: int = 0) -> jax.Array:
  """The pooled encoder output of a [B, L] column; ``chunk`` > 0 runs it in rematerialised
  chunks of that many rows (see the module docstring)."""
  graphdef, state = nnx.split(model)

  def one(ids, mask, key):
    out = nnx.merge(graphdef, state).encoder(ids, token_type_ids=jnp.zeros_like(ids),
                                              padding_mask=mask, dropout_key=key)
    return pool(out.last_hidden_state, mask, pooling)

  rows = ids.shape[0]
  if not chunk or chunk >= rows:
    return one(ids, mask, dropout_key)
  if rows % chunk:
    raise ValueError(f"the batch ({rows} rows) is not a multiple of the chunk ({chunk})")
  n = rows // chunk  # chunk k = rows {k, k + n, k + 2n, ...}: each device's rows split evenly
  split = lambda x: x.reshape(chunk, n, *x.shape[1:]).swapaxes(0, 1)
  keys = (None if dropout_key is None else
          jax.vmap(lambda k: jax.random.fold_in(dropout_key, k))(jnp.arange(n)))

  def body(xs):
    ids, mask, key = xs
    return one(ids, mask, key)

  out = jax.lax.map(jax.checkpoint(body), (split(ids), split(mask), keys))  # [n, chunk, H]
  return out.swapaxes(0, 1).reshape(rows, -1)


def ranking_loss(anchors: jax.Array, positives: jax.Array, negatives: jax.Array | None = None, *,
                 scale: float = 20.0, symmetric: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per-row InfoNCE losses [B] and whether each anchor ranks its own positive first [B]."""
  a, p = normalize(anchors), normalize(positives)
  candidates = p if negatives is None else jnp.concatenate([p, normalize(negatives)], 0)
  # every device scores its anchors against all candidates: gather them (not the anchors)
  candidates = sharding.constrain(candidates, (None, None))
  a = sharding.constrain(a, ("batch", None))
  scores = scale * (a @ candidates.T)  # [B, B(1 + k)], rows sharded like the anchors
  rows = jnp.arange(a.shape[0])
  positive = scores[rows, rows]
  logz = jax.nn.logsumexp(scores, axis=1)
  if symmetric:  # each positive against every anchor: a column of the positives' block
    logz = 0.5 * (logz + jax.nn.logsumexp(scores[:, :a.shape[0]], axis=0))
  return logz - positive, jnp.argmax(scores, axis=1) == rows


class ContrastiveObjective:
  """The engine's objective for ``task: sentence_embedding``: (model, batch, dropout_key,
  totals) -> (mean loss over the global batch, sums)."""

  name = "contrastive"

  def __init__(self, *, pooling: str = "mean", scale: float = 20.0, symmetric: bool = False,
               chunk: int = 0):
    if pooling not in POOLINGS:
      raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    self.pooling, self.scale, self.symmetric, self.chunk = pooling, scale, symmetric, chunk

  def totals(self, batch) -> dict[str, jax.Array]:
    return {"pairs": jnp.asarray(batch["anchor_ids"].shape[0], jnp.float32)}

  def embeddings(self, model, batch, dropout_key=None) -> list[jax.Array]:
    out = []
    for i, column in enumerate(c for c in COLUMNS if f"{c}_ids" in batch):
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
      out.append(embed(model, batch[f"{column}_ids"], batch[f"{column}_mask"],
                       pooling=self.pooling, dropout_key=key, chunk=self.chunk))
    return out

  def __call__(self, model, batch, dropout_key, totals):
    loss, correct = ranking_loss(*self.embeddings(model, batch, dropout_key), scale=self.scale,
                                 symmetric=self.symmetric)
    sums = {"task_loss": loss.sum(), "task_correct": correct.sum().astype(jnp.float32),
            "task_count": jnp.asarray(loss.shape[0], jnp.float32)}
    return loss.sum() / totals["pairs"], sums

  def finalize(self, sums: dict) -> dict[str, float]:
    count = max(float(sums["task_count"]), 1.0)
    return {"loss": float(sums["task_loss"]) / count,
            "accuracy": float(sums["task_correct"]) / count}  # in-batch top-1
