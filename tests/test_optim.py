"""StableAdamW equals AdamW while its update clipping is inactive and clips exactly by
1 / max(1, RMS(g^2 / v)) when active; the warmup-stable-decay schedule has the right shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax.config import OptimConfig
from bertjax.models import Model
from bertjax.objectives import MlmObjective
from bertjax.train.step import init_state, make_train_step
from test_step import batch, tiny
from bertjax.train.optim import make_optimizer, schedule, stable_adamw, warmup_stable_decay


def params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}


def run(tx, grads_seq, p):
  state = tx.init(p)
  for g in grads_seq:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  return p


def steady_grads(n, seed=1):
  """Shrinking gradients: g^2 < v after the first step, so RMS(g^2 / v) <= 1 (no clipping)."""
  rng = np.random.default_rng(seed)
  base = {k: rng.normal(size=v.shape) for k, v in params().items()}
  return [jax.tree.map(lambda b: jnp.asarray(b * (1 - 0.05 * i), jnp.float32), base)
          for i in range(n)]


def test_equals_adamw_when_clipping_is_inactive():
  grads = steady_grads(5)
  a = run(stable_adamw(1e-2, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, max_lr=1.0), grads, params())
  b = run(optax.adamw(1e-2, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1), grads, params())
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-5, atol=1e-6)


def test_clips_by_the_rms_of_g2_over_v():
  p = params()
  g1 = jax.tree.map(lambda x: jnp.full_like(x, 0.01), p)
  g2 = jax.tree.map(lambda x: jnp.full_like(x, 1.0), p)  # a spike: g^2 >> v
  tx = stable_adamw(1.0, b1=0.9, b2=0.98, eps=1e-8)
  state = tx.init(p)
  _, state = tx.update(g1, state, p)
  updates, _ = tx.update(g2, state, p)
  # step 2 by hand: debiased betas b' = (b^2 - b) / (b^2 - 1) = b / (1 + b)
  c1, c2 = 0.9 / 1.9, 0.98 / 1.98
  m = c1 * 0.01 + (1 - c1) * 1.0
  v = c2 * 0.01**2 + (1 - c2) * 1.0
  rms = np.sqrt(1.0 / v)
  assert rms > 1.0
  expected = -(m / (np.sqrt(v) + 1e-8)) / rms
  for k in updates:
    np.testing.assert_allclose(np.asarray(updates[k]), expected, rtol=1e-5)


def test_wsd_schedule_shape():
  lr = warmup_stable_decay(1.0, warmup_steps=10, total_steps=100, decay_steps=20,
                           final_fraction=0.1, shape="one_minus_sqrt")
  values = np.array([float(lr(s)) for s in range(101)])
  assert values[0] == 0.0 and values[5] == pytest.approx(0.5) and values[10] == pytest.approx(1.0)
  assert np.all(values[10:81] == pytest.approx(1.0))  # stable phase
  assert values[100] == pytest.approx(0.1)
  frac = 5 / 20
  assert values[85] == pytest.approx(0.1 + 0.9 * (1 - np.sqrt(frac)))  # 1 - sqrt decay
  assert np.all(np.diff(values[80:]) <= 1e-7)
  linear = schedule(OptimConfig(learning_rate=2.0, warmup_steps=0, schedule="wsd",
                                decay_steps=50, decay_shape="linear"), 100)
  assert float(linear(75)) == pytest.approx(1.0) and float(linear(100)) == pytest.approx(0.0)


def test_stable_adamw_from_config_skips_decay_on_biases():
  tx = make_optimizer(OptimConfig(name="stable_adamw", learning_rate=1e-3, warmup_steps=0,
                                  schedule="constant", weight_decay=0.5, clip_norm=None), 10)
  p = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  zero = jax.tree.map(jnp.zeros_like, p)
  updates, _ = tx.update(zero, tx.init(p), p)
  assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
  assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-1e-3 * 0.5 / 1e-3)


@pytest.mark.parametrize("cfg", [
    OptimConfig(learning_rate=1e-3, warmup_steps=10),
    OptimConfig(learning_rate=1e-3, warmup_steps=0),
    OptimConfig(learning_rate=1e-3, warmup_fraction=0.1),
    OptimConfig(learning_rate=1e-3, warmup_steps=5, schedule="constant")])
def test_schedules_equal_optax_and_take_a_traced_length(cfg):
  """linear / constant: warmup then optax.linear_schedule; the same values when the total
  step count is a traced scalar (one compiled step serves runs of any length)."""
  traced = jax.jit(lambda step, total: schedule(cfg, total)(step))
  for total in (40, 100):
    warm = cfg.warmup_steps if cfg.warmup_fraction is None else round(cfg.warmup_fraction * total)
    after = (optax.constant_schedule(cfg.learning_rate) if cfg.schedule == "constant" else
             optax.linear_schedule(cfg.learning_rate, 0.0, max(total - warm, 1)))
    ref = optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, max(warm, 1)), after],
                               [warm])
    for step in range(total + 1):
      want = float(ref(step))
      assert float(schedule(cfg, total)(step)) == pytest.approx(want, rel=1e-6, abs=1e-12)
      assert float(traced(step, total)) == pytest.approx(want, rel=1e-6, abs=1e-12)
  assert traced._cache_size() == 1  # one program for both lengths


def test_the_step_reads_the_run_length_from_its_state():
  """Two runs of 10 and 1000 steps: one compiled program (same HLO). Linear decay without
  warmup: step 1 applies lr * (1 - 1/10) in the first, lr * (1 - 1/1000) in the second -- the
  same Adam direction (same state after step 0), so the updates' ratio is 0.9 / 0.999."""
  cfg = OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0, clip_norm=None)
  graphdef, params = nnx.split(Model(tiny(), rngs=nnx.Rngs(0)))
  tx = functools.partial(make_optimizer, cfg)
  step = jax.jit(make_train_step(graphdef, MlmObjective(), tx,
                                 lr_schedule=lambda s, t: schedule(cfg, t)(s)))
  moves, lrs = {}, {}
  for total in (10, 1000):
    s0 = init_state(graphdef, params, tx, 0, total_steps=total)
    s1, _ = step(s0, batch())
    s2, metrics = step(s1, batch())
    lrs[total] = float(metrics["learning_rate"])
    kernel = lambda s: np.asarray(s.params["encoder"]["layers"][0]["mlp"]["wi"]["kernel"][...])
    moves[total] = kernel(s2) - kernel(s1)
  assert step._cache_size() == 1
  assert lrs == pytest.approx({10: 0.9e-2, 1000: 0.999e-2})
  ratio = np.abs(moves[10]).sum() / np.abs(moves[1000]).sum()
  assert ratio == pytest.approx(0.9 / 0.999, rel=1e-4)
