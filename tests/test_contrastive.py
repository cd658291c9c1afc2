"""Contrastive sentence-embedding loss: equal to sentence-transformers'
MultipleNegativesRankingLoss (and its symmetric variant) on all-MiniLM-L6-v2, loss and every
gradient; global in-batch negatives on a sharded mesh; cached gradients (GradCache) equal to the
plain loss's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from weights import minilm

from bertjax import sharding
from bertjax.interop.hf import load_hf
from bertjax.interop.registry import get_adapter
from bertjax.models import Model
from bertjax.objectives.contrastive import ContrastiveObjective, ranking_loss
from bertjax.params import assign_flat_params, leaf_name
from contrastive_data import pairs as _pairs, tiny as _tiny

ANCHORS = ["A man is eating food.", "A woman plays the violin in the park.",
           "The stock market fell sharply today.", "Children are building a sandcastle."]
POSITIVES = ["Someone is having a meal.", "A lady performs music outdoors.",
             "Shares dropped a lot this afternoon.", "Kids make a castle of sand on the beach."]
NEGATIVES = ["A man is riding a horse.", "A woman is reading a book indoors.",
             "The weather was sunny and warm.", "Adults are swimming in the sea."]


def _loss_and_grads(objective, model, batch):
  graphdef, params = nnx.split(model)

  def loss(params):
    batch_ = dict(batch)
    return objective(nnx.merge(graphdef, params), batch_, None, objective.totals(batch_))[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return float(value), {leaf_name(p): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
                        for p, v in flat}


@pytest.mark.parametrize("symmetric,negatives", [(False, True), (True, False)])
def test_equals_sentence_transformers_mnrl(symmetric, negatives):
  from sentence_transformers import SentenceTransformer, losses

  path = minilm()
  st = SentenceTransformer(str(path), device="cpu")
  st.eval()  # dropout off on both sides
  columns = [ANCHORS, POSITIVES] + ([NEGATIVES] if negatives else [])
  features = [st.tokenize(texts) for texts in columns]
  loss_cls = losses.MultipleNegativesSymmetricRankingLoss if symmetric else \
      losses.MultipleNegativesRankingLoss
  st_loss = loss_cls(st)  # scale 20, cosine similarity: the defaults
  value = st_loss([dict(f) for f in features], None)
  value.backward()
  hf = st[0].auto_model
  theirs = {name: p.grad.numpy() for name, p in hf.named_parameters() if p.grad is not None}

  cfg, params = load_hf(path)
  model = assign_flat_params(Model(cfg, rngs=nnx.Rngs(0)), params)
  batch = {}
  for name, f in zip(("anchor", "positive", "negative"), features):
    batch[f"{name}_ids"] = jnp.asarray(f["input_ids"].numpy(), jnp.int32)
    batch[f"{name}_mask"] = jnp.asarray(f["attention_mask"].numpy() > 0)
  ours_loss, ours = _loss_and_grads(ContrastiveObjective(symmetric=symmetric), model, batch)
  assert abs(ours_loss - float(value)) <= 1e-5, (ours_loss, float(value))

  table = get_adapter(cfg.family).weight_names(cfg)
  compared = 0
  for name, g in ours.items():
    if not name.startswith("encoder.") or name.startswith("encoder.pooler."):
      continue
    entry = table[name]
    mine = entry.transform.to_hf(g)
    ref = theirs[entry.hf]
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(mine - ref).max() <= 1e-5 * scale, (name, np.abs(mine - ref).max())
    compared += 1
  assert compared == len([n for n in theirs if not n.startswith("pooler.")])


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcache_equals_the_plain_loss(symmetric):
  model, batch = _tiny(), {k: jnp.asarray(v) for k, v in _pairs().items()}
  plain_loss, plain = _loss_and_grads(ContrastiveObjective(symmetric=symmetric), model, batch)
  cached_loss, cached = _loss_and_grads(ContrastiveObjective(symmetric=symmetric, chunk=4),
                                        model, batch)
  assert abs(plain_loss - cached_loss) <= 1e-6 * max(1.0, abs(plain_loss))
  for name in plain:
    np.testing.assert_allclose(cached[name], plain[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_negatives_are_the_global_batch_on_a_sharded_mesh():
  """16 pairs over 8 data-parallel devices (2 rows each): the loss and gradients equal one
  device's over the same 16 pairs; with each device's 2 rows as its only negatives the loss
  would be far lower (checked against that per-shard loss)."""
  model, local = _tiny(), _pairs()
  objective = ContrastiveObjective()
  one_loss, one = _loss_and_grads(objective, model, {k: jnp.asarray(v) for k, v in local.items()})

  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  with sharding.use_mesh(mesh):
    sharded = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in local.items()}
    assert len(sharded["anchor_ids"].sharding.device_set) == 8
    mesh_loss, on_mesh = _loss_and_grads(objective, model, sharded)
  assert abs(mesh_loss - one_loss) <= 1e-5 * max(1.0, abs(one_loss))
  for name in one:
    np.testing.assert_allclose(on_mesh[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)

  # each device's 2 rows as its only negatives: the embeddings once, the loss per shard
  embedded = objective.embeddings(model, {k: jnp.asarray(v) for k, v in local.items()})
  per_shard = np.mean([float(ranking_loss(*(e[i:i + 2] for e in embedded))[0].mean())
                       for i in range(0, 16, 2)])
  assert per_shard < one_loss - 0.5, (per_shard, one_loss)


def test_negatives_are_global_across_two_processes(tmp_path):
  """The same 16 pairs on a 2-process x 4-device mesh (jax.distributed, 8 pairs per process):
  loss and gradients equal one device's -- the negatives cross the process boundary."""
  import os
  import subprocess
  import sys
  from pathlib import Path

  import portpicker

  tests = Path(__file__).resolve().parent
  port, out = portpicker.pick_unused_port(), tmp_path / "two.npz"
  env = dict(os.environ, PYTHONPATH=f"{tests}:{tests.parent}")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(tests / "mp_contrastive.py"), str(i), str(port),
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one_loss, one = _loss_and_grads(ContrastiveObjective(), _tiny(),
                                  {k: jnp.asarray(v) for k, v in _pairs().items()})
  two = np.load(out)
  assert abs(float(two["loss"]) - one_loss) <= 1e-5 * max(1.0, abs(one_loss))
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
