"""The jitted train step: gradient accumulation equals the full batch, the BERT weight-decay
mask, bf16 compute with f32 parameters, and the warmup/decay schedule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax.config import OptimConfig, model_config
from bertjax.models import Model
from bertjax.objectives import MlmObjective
from bertjax.train.optim import decay_mask, make_optimizer, schedule
from bertjax.train.step import init_state, make_train_step


def tiny(**kw):
  return model_config({"family": "bert", "vocab_size": 64, "hidden_size": 32, "num_layers": 2,
                       "num_heads": 2, "intermediate_size": 48, "hidden_dropout": 0.0,
                       "attention_dropout": 0.0, **kw})


def batch(n=8, t=16, p=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 64, (n, t)).astype(np.int32)
  mask = np.ones((n, t), bool)
  mask[::2, 12:] = False
  weights = np.ones((n, p), np.float32)
  weights[1::3, 2:] = 0.0  # rows with different numbers of masked tokens
  return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "padding_mask": mask,
          "masked_positions": rng.integers(1, 12, (n, p)).astype(np.int32),
          "masked_ids": rng.integers(5, 64, (n, p)).astype(np.int32), "masked_weights": weights,
          "seq_relationship_label": rng.integers(0, 2, n).astype(np.int32)}


def run_step(cfg, accum, b, opt=OptimConfig(learning_rate=1e-2, warmup_steps=0, clip_norm=None),
             tx=None):
  graphdef, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  tx = tx or make_optimizer(opt, 10)
  state = init_state(graphdef, params, tx, 0)
  step = jax.jit(make_train_step(graphdef, MlmObjective(), tx, accum))
  return step(state, b)


def test_gradient_accumulation_equals_full_batch():
  b = batch()
  sgd = optax.sgd(1.0)  # params after one step = params - grads: compares the gradients
  s1, m1 = run_step(tiny(), 1, b, tx=sgd)
  s4, m4 = run_step(tiny(), 4, b, tx=sgd)
  assert abs(float(m1["objective"]) - float(m4["objective"])) <= 1e-5
  assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) <= 1e-5
  for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    assert np.max(np.abs(np.asarray(a) - np.asarray(c))) <= 1e-6
  # normalised by the masked-token count of the whole batch, not per microbatch
  assert float(m4["mlm_count"]) == float(b["masked_weights"].sum())


def test_weight_decay_skips_biases_and_norm_scales():
  _, params = nnx.split(Model(tiny(), rngs=nnx.Rngs(0)))
  mask = decay_mask(params)
  flat = {"/".join(str(k.key) for k in path if hasattr(k, "key")): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = {k for k, v in flat.items() if v}
  assert "encoder/layers/0/attention/query/kernel" in decayed
  assert "encoder/embeddings/word/embedding" in decayed
  assert "mlm/transform/kernel" in decayed
  skipped = set(flat) - decayed
  assert skipped == {k for k in flat if k.endswith(("/bias", "/scale"))}
  assert "encoder/layers/1/attention_norm/scale" in skipped and "mlm/bias" in skipped


def test_bf16_compute_keeps_f32_params():
  b = batch()
  s32, m32 = run_step(tiny(), 1, b)
  s16, m16 = run_step(tiny(dtype="bfloat16"), 1, b)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
  assert abs(float(m16["objective"]) - float(m32["objective"])) <= 0.05 * float(m32["objective"])
  assert float(m16["objective"]) != float(m32["objective"])  # it did compute in another dtype
  # the activations are bf16, and so is every matmul but the backward of the attention
  # scores (accumulated in f32, preferred_element_type): their dq and dk take the f32 cotangent
  model = Model(tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  out = model(jnp.asarray(b["input_ids"]), padding_mask=jnp.asarray(b["padding_mask"]),
              output_hidden_states=True)
  assert out.last_hidden_state.dtype == jnp.bfloat16
  assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
  graphdef, params = nnx.split(model)
  loss = lambda p: MlmObjective()(nnx.merge(graphdef, p), b, None,
                                  MlmObjective().totals(b))[0]
  dots = [e for e in _equations(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
          if e.primitive.name == "dot_general"]
  wide = [e for e in dots if any(v.aval.dtype != jnp.bfloat16 for v in e.invars)]
  assert len(dots) == 60 and len(wide) == 2 * tiny().num_layers, wide


def _equations(jaxpr):
  """Every equation of a jaxpr, inner jaxprs (jit, remat, custom_vjp, scan) included."""
  for e in jaxpr.eqns:
    yield e
    for v in e.params.values():
      for inner in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def test_schedule_warmup_then_linear_decay():
  lr = schedule(OptimConfig(learning_rate=1.0, warmup_steps=10), 110)
  assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 0.5) < 1e-6 and abs(float(lr(10)) - 1.0) < 1e-6
  assert abs(float(lr(60)) - 0.5) < 1e-6 and float(lr(110)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_optimizer_and_clipping_update_as_optax_does(name):
  """One step's parameters equal optax's clip_by_global_norm + lamb / adamw (the BERT decay
  mask) applied to the step's own gradients; clipping changes the update."""
  b = batch()
  # eps near the clipped gradients' size: Adam's sign-like first step then feels the clip
  opt = OptimConfig(name=name, learning_rate=1e-2, warmup_steps=0, clip_norm=0.5, eps=1e-4,
                    schedule="constant", weight_decay=0.1)
  graphdef, params = nnx.split(Model(tiny(), rngs=nnx.Rngs(0)))
  obj = MlmObjective()
  grads = jax.jit(jax.grad(lambda p: obj(nnx.merge(graphdef, p), b, None, obj.totals(b))[0]))(
      params)
  core = getattr(optax, name)(1e-2, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=0.1,
                              mask=decay_mask)
  want = {}
  for clip in (0.5, None):
    tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip else core
    one_step = lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0])
    want[clip] = jax.jit(one_step)(grads, params)  # jitted: eager optax on a tree is slow
  state, m = run_step(tiny(), 1, b, opt)
  assert float(m["grad_norm"]) > 1.0  # well above the clip norm: clipping is active
  for got, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(want[0.5])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-6)
  unclipped, _ = run_step(tiny(), 1, b, dataclasses.replace(opt, clip_norm=None))
  for got, ref in zip(jax.tree.leaves(unclipped.params), jax.tree.leaves(want[None])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-6)
  # clipping changes the update by far more than the tolerance
  apart = max(float(np.abs(np.asarray(a) - np.asarray(c)).max())
              for a, c in zip(jax.tree.leaves(want[0.5]), jax.tree.leaves(want[None])))
  assert apart > 1e-4, apart
