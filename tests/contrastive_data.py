"""A tiny encoder and random pair batches for the contrastive tests, importable by the
2-process worker (``mp_contrastive.py``) without the test module's heavier imports."""

import numpy as np
from flax import nnx

from bertjax.config import model_config
from bertjax.models import Model


def tiny():
  cfg = model_config("bert-tiny", ["num_layers=2", "hidden_size=32", "num_heads=2",
                                   "intermediate_size=64", "vocab_size=64", "heads=[]"])
  return Model(cfg, rngs=nnx.Rngs(0))


def pairs(rows=16, length=12, seed=0):
  rng = np.random.default_rng(seed)
  batch = {}
  for name in ("anchor", "positive", "negative"):
    ids = rng.integers(5, 64, (rows, length)).astype(np.int32)
    lengths = rng.integers(3, length + 1, rows)
    mask = np.arange(length)[None] < lengths[:, None]
    batch[f"{name}_ids"], batch[f"{name}_mask"] = np.where(mask, ids, 0), mask
  return batch
