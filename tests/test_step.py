"""The jitted train step: gradient accumulation equals the full batch, the BERT weight-decay
mask, bf16 compute with f32 parameters, and the warmup/decay schedule."""

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


def test_schedule_warmup_then_linear_decay():
  lr = schedule(OptimConfig(learning_rate=1.0, warmup_steps=10), 110)
  assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 0.5) < 1e-6 and abs(float(lr(10)) - 1.0) < 1e-6
  assert abs(float(lr(60)) - 0.5) < 1e-6 and float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_lamb_and_clipping_are_wired():
  b = batch()
  _, m = run_step(tiny(), 1, b, OptimConfig(name="lamb", learning_rate=1e-3, warmup_steps=0,
                                               clip_norm=1e-3))
  assert np.isfinite(float(m["objective"]))
  tx = make_optimizer(OptimConfig(clip_norm=0.5), 10)
  assert isinstance(tx, optax.GradientTransformation)
