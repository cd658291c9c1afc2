"""Scan over layers and remat change how the layers run, never what they compute: for every
family, scanned equals unrolled and each remat policy equals none (forward, every hidden state,
gradients: <= 1e-6 in f32); the scan plan groups ModernBERT's global/local period and ALBERT's
shared blocks; remat lowers the compiled step's temporary memory; layer-wise LR decay trains
the same parameters under scan."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax import sharding
from bertjax.config import ConfigError, OptimConfig, model_config
from bertjax.models import Model
from bertjax.nn.encoder import Segment, plan_segments
from bertjax.objectives import MlmObjective
from bertjax.train.engine import build_engine
from bertjax.train.optim import make_optimizer

TINY = {"hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "vocab_size": 99,
        "max_position_embeddings": 64}
FAMILIES = {
    "bert": {"num_layers": 3},
    "roberta": {"num_layers": 3},
    "albert": {"num_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2},
    "distilbert": {"num_layers": 3},
    "electra": {"num_layers": 3, "generator_width_fraction": 0.5},
    "spanbert": {"num_layers": 3},
    "modernbert": {"num_layers": 7, "local_window": 4},
    "eurobert": {"num_layers": 3},
}


def tiny(family, **kw):
  fields = {**TINY, **FAMILIES[family], **kw}
  return model_config(f"{family}-tiny", [f"{k}={v}" for k, v in fields.items()])


def run(cfg, params, ids, key):
  """Loss over every output the model has, its gradients, and every hidden state."""

  def loss(params):
    model = nnx.merge(nnx.split(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))))[0], params)
    out = model(ids, padding_mask=ids > 0, dropout_key=key, output_hidden_states=True)
    total = jnp.mean(out.last_hidden_state ** 2) + sum(jnp.mean(h) for h in out.hidden_states)
    for logits in (out.mlm_logits, out.seq_relationship_logits, out.rtd_logits):
      if logits is not None:
        total = total + jnp.mean(jax.nn.log_softmax(logits) if logits.ndim > 2 else logits)
    if model.generator is not None:
      total = total + jnp.mean(model.generator_logits(ids, dropout_key=key) ** 2)
    return total, out.hidden_states

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


# every family scanned with full remat -- but RoBERTa, SpanBERT and ELECTRA, whose layers are
# BERT's block as it is (they differ in embeddings, heads and data, and ELECTRA's generator is a
# second stack of the same block: BERT's case covers their scan) -- and the other policies on
# BERT (each variant is a compile)
CASES = [(f, True, "full") for f in sorted(set(FAMILIES) - {"roberta", "spanbert", "electra"})] + [
    ("bert", True, "none"), ("bert", False, "dots"), ("bert", True, "names")]


@pytest.mark.parametrize("family,scan,remat", CASES)
def test_scan_and_remat_equal_unrolled(family, scan, remat):
  cfg = tiny(family)
  params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))[1]
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 99, (2, 16)), jnp.int32).at[1, 12:].set(0)
  key = jax.random.PRNGKey(3)  # dropout on: scanned layers draw the same keys
  (ref, ref_hidden), ref_grads = run(cfg, params, ids, key)
  for scan, remat in ((scan, remat),):
    (loss, hidden), grads = run(dataclasses.replace(cfg, scan_layers=scan, remat=remat), params,
                                ids, key)
    assert abs(float(loss) - float(ref)) <= 1e-6 * max(1.0, abs(float(ref))), (scan, remat)
    assert len(hidden) == len(ref_hidden) == len(cfg.block_schedule()) + 1
    for a, b in zip(hidden, ref_hidden):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                            jax.tree.leaves(ref_grads)):
      assert float(jnp.max(jnp.abs(a - b))) <= 1e-6, (scan, remat, jax.tree_util.keystr(path))


def test_scan_plan_groups_periods_and_shared_blocks():
  # ModernBERT: layer 0 (global, no attention norm) alone, then (local, local, global) x 7
  mb = model_config("modernbert-base", ["scan_layers=true"])
  assert plan_segments(mb) == (Segment(0, 1, 1), Segment(1, 3, 7))
  assert plan_segments(mb, scan=False) == tuple(Segment(i, 1, 1) for i in range(22))
  # BERT: one scan over all layers; ALBERT: one scan per shared group
  assert plan_segments(model_config("bert-large", ["scan_layers=true"])) == (Segment(0, 1, 24),)
  albert = model_config("albert-base", ["scan_layers=true", "num_hidden_groups=2"])
  assert plan_segments(albert) == (Segment(0, 1, 6), Segment(6, 1, 6))
  # the parameters stay per block: a scanned model's state is the unrolled one's
  shapes = lambda c: jax.tree.map(lambda a: a.shape, nnx.state(nnx.eval_shape(
      lambda: Model(c, rngs=nnx.Rngs(0)))))
  small = tiny("modernbert")
  assert shapes(small) == shapes(dataclasses.replace(small, scan_layers=True))


def test_remat_names_are_checked():
  with pytest.raises(ConfigError, match="remat_names"):
    model_config("bert-tiny", ["remat=names", "remat_names=[query_proj,logits]"])


def _compiled_temp_bytes(cfg) -> int:
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  rng = np.random.default_rng(0)
  b, t, p = 4, 128, 8
  batch = {"input_ids": rng.integers(5, 99, (b, t)).astype(np.int32),
           "token_type_ids": np.zeros((b, t), np.int32),
           "padding_mask": np.ones((b, t), bool),
           "masked_positions": rng.integers(0, t, (b, p)).astype(np.int32),
           "masked_ids": rng.integers(5, 99, (b, p)).astype(np.int32),
           "masked_weights": np.ones((b, p), np.float32),
           "seq_relationship_label": np.full((b,), -1, np.int32)}
  with sharding.use_mesh(mesh):
    graphdef, abstract = sharding.abstract_model(lambda: Model(cfg, rngs=nnx.Rngs(0)))
    engine = build_engine(graphdef, abstract, MlmObjective(), make_optimizer(OptimConfig(), 10),
                          seed=0, example_batch=batch)
    compiled = engine.train_step.lower(engine.abstract_state(),
                                       engine.abstract_batch(batch)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_remat_lowers_compiled_memory():
  cfg = tiny("bert", num_layers=4, hidden_dropout=0.0, attention_dropout=0.0, heads="[mlm]",
             pooler=False)
  temp = {remat: _compiled_temp_bytes(dataclasses.replace(cfg, remat=remat, scan_layers=True))
          for remat in ("none", "names", "full")}
  assert temp["full"] < temp["names"] < temp["none"], temp


def test_layer_decay_trains_the_same_under_scan():
  cfg = tiny("bert", hidden_dropout=0.0, attention_dropout=0.0)
  opt = OptimConfig(learning_rate=1e-2, warmup_steps=0, layer_decay=0.5)
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(5, 99, (4, 16)).astype(np.int32),
           "token_type_ids": np.zeros((4, 16), np.int32),
           "padding_mask": np.ones((4, 16), bool),
           "masked_positions": rng.integers(0, 16, (4, 3)).astype(np.int32),
           "masked_ids": rng.integers(5, 99, (4, 3)).astype(np.int32),
           "masked_weights": np.ones((4, 3), np.float32),
           "seq_relationship_label": np.zeros((4,), np.int32)}
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  after = []
  for scan in (False, True):
    c = dataclasses.replace(cfg, scan_layers=scan)
    with sharding.use_mesh(mesh):
      make = lambda: Model(c, rngs=nnx.Rngs(0))
      graphdef, abstract = sharding.abstract_model(make)
      engine = build_engine(graphdef, abstract, MlmObjective(),
                            make_optimizer(opt, 10, c.num_blocks), seed=0, example_batch=batch)
      engine.init(make)
      state, _ = engine.train_step(engine.state, engine.batch(batch))
      after.append(jax.tree.map(np.asarray, state.params))
  for a, b in zip(jax.tree.leaves(after[0]), jax.tree.leaves(after[1])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
