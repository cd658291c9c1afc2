"""``Predictor``: jitted task logits over padded global batches -- dev evaluation during
fine-tuning and ``bertjax evaluate`` / ``predict`` (``serve.py``) alike."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import sharding
from bertjax.data.buckets import sorted_batches
from bertjax.tasks.data import MODEL_INPUTS


class Predictor:
  """Jitted ``params, inputs -> task logits`` over global batches of rows sorted by length, each
  padded only to its bucket (one compile per bucket; rows split over processes like training
  batches); logits come back in input order, whole, on every host. Per-token logits at padding
  positions are a large negative value."""

  PAD_LOGIT = -1e9

  def __init__(self, graphdef, batch_size: int, example: dict, *,
               buckets: tuple[int, ...] | None = None, per_token: bool = False):
    """Call under ``sharding.use_mesh``: batches and logits live on that mesh."""
    mesh, _ = sharding.layout()
    self.batch_size, self.buckets, self.per_token = batch_size, buckets, per_token
    self.in_sh = {k: sharding.batch_sharding(mesh, ndim=example[k].ndim) for k in MODEL_INPUTS}

    def logits(params, batch):
      model = nnx.merge(graphdef, params)
      return model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                   padding_mask=batch["padding_mask"]).task_logits

    self.fn = jax.jit(logits, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, params, arrays: dict[str, np.ndarray]) -> np.ndarray:
    n, full = arrays["input_ids"].shape
    b = self.batch_size
    buckets = tuple(sorted(set(self.buckets or ()) | {full}))
    procs, pid = jax.process_count(), jax.process_index()
    local = b // procs
    out = None
    for bucket, idx in sorted_batches(arrays["padding_mask"].sum(1), b, buckets):
      rows = {k: arrays[k][idx, :bucket] for k in MODEL_INPUTS}
      short = b - len(idx)
      if short:  # pad the last batch with copies of its first row (dropped below)
        rows = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in rows.items()}
      mine = {k: v[pid * local:(pid + 1) * local] for k, v in rows.items()}
      logits = np.asarray(self.fn(params, sharding.global_batch(mine, self.in_sh)),
                          np.float32)[:len(idx)]
      if out is None:
        shape = (n, full) + logits.shape[2:] if self.per_token else (n,) + logits.shape[1:]
        out = np.full(shape, self.PAD_LOGIT if self.per_token else 0.0, np.float32)
      if self.per_token:  # padding positions never carry scores
        real = rows["padding_mask"][:len(idx)].reshape(len(idx), bucket, *[1] * (logits.ndim - 2))
        out[idx, :bucket] = np.where(real, logits, self.PAD_LOGIT)
      else:
        out[idx] = logits
    return out
