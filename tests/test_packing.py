"""Packed rows (several documents in one row, segment ids) give the same per-token outputs as
the same documents run one by one, padded -- for every family; no attention across documents."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax.config import model_config
from bertjax.config import families
from bertjax.models import Model

TOL = 1e-5


def tiny(family, **kw):
  base = dict(family=family, vocab_size=97, hidden_size=32, num_layers=3, num_heads=4,
              intermediate_size=40, max_position_embeddings=64, hidden_dropout=0.0,
              attention_dropout=0.0, pad_token_id=1 if family == "roberta" else 0)
  if family in ("albert", "electra"):
    base["embedding_size"] = 16
  if family == "eurobert":
    base["num_kv_heads"] = 2
  if family == "modernbert":
    base.update(local_window=2, global_every=2)
  return model_config({**base, **kw})


def documents(lengths, pad_id, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(pad_id + 3, 97, n).astype(np.int32) for n in lengths]


def unpacked(model, docs, pad_id):
  width = max(len(d) for d in docs)
  ids = np.full((len(docs), width), pad_id, np.int32)
  mask = np.zeros_like(ids, bool)
  for i, d in enumerate(docs):
    ids[i, :len(d)] = d
    mask[i, :len(d)] = True
  out = model(jnp.asarray(ids), padding_mask=jnp.asarray(mask)).last_hidden_state
  return [np.asarray(out[i, :len(d)]) for i, d in enumerate(docs)]


def packed(model, docs, pad_id, extra_pad=3):
  total = sum(len(d) for d in docs) + extra_pad
  ids = np.full((1, total), pad_id, np.int32)
  seg = np.zeros_like(ids)
  start = 0
  for k, d in enumerate(docs, 1):
    ids[0, start:start + len(d)] = d
    seg[0, start:start + len(d)] = k
    start += len(d)
  out = model(jnp.asarray(ids), padding_mask=jnp.asarray(seg > 0),
              segment_ids=jnp.asarray(seg)).last_hidden_state
  pieces, start = [], 0
  for d in docs:
    pieces.append(np.asarray(out[0, start:start + len(d)]))
    start += len(d)
  return pieces


@pytest.mark.parametrize("family", families())
def test_packed_equals_one_by_one(family):
  cfg = tiny(family)
  model = Model(cfg, rngs=nnx.Rngs(0))
  docs = documents([5, 9, 4], cfg.pad_token_id)
  for a, b in zip(packed(model, docs, cfg.pad_token_id), unpacked(model, docs, cfg.pad_token_id)):
    assert np.max(np.abs(a - b)) <= TOL


@pytest.mark.parametrize("impl", ["local", "einsum", "xla"])
def test_packed_modernbert_local_layers_on_every_attention_path(impl):
  cfg = tiny("modernbert", attention_impl=impl, max_position_embeddings=128)
  model = Model(cfg, rngs=nnx.Rngs(0))
  docs = documents([20, 31, 9], cfg.pad_token_id, seed=1)  # 60+ tokens >> window 2
  for a, b in zip(packed(model, docs, cfg.pad_token_id), unpacked(model, docs, cfg.pad_token_id)):
    assert np.max(np.abs(a - b)) <= TOL


def test_no_attention_across_documents():
  """Changing one document leaves every other document's outputs untouched."""
  cfg = tiny("bert")
  model = Model(cfg, rngs=nnx.Rngs(0))
  docs = documents([6, 6, 6], 0)
  before = packed(model, docs, 0)
  docs[1] = documents([6], 0, seed=9)[0]
  after = packed(model, docs, 0)
  assert np.max(np.abs(before[0] - after[0])) == 0 and np.max(np.abs(before[2] - after[2])) == 0
  assert np.max(np.abs(before[1] - after[1])) > 1e-3
