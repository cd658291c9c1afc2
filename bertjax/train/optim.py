"""Optax optimizers: AdamW with the BERT recipe (no weight decay on biases and norm scales,
linear warmup then linear decay, global-norm clipping), LAMB (ALBERT), and StableAdamW with the
warmup-stable-decay schedule (ModernBERT), the last two written here since optax has neither."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bertjax.config import OptimConfig

NO_DECAY = ("bias", "scale")  # LayerNorm/RMSNorm scales and every bias (bert optimization.py)


def warmup_stable_decay(peak: float, warmup_steps, total_steps, decay_steps: int,
                        final_fraction: float = 0.0, shape: str = "one_minus_sqrt") -> optax.Schedule:
  """Trapezoidal (WSD) schedule: linear warmup to ``peak``, flat, then over the last
  ``decay_steps`` down to ``final_fraction * peak`` -- linearly, or as ModernBERT's
  ``1 - sqrt``: lr(t) = peak * (a + (1 - a) * (1 - sqrt((t - (T - T_d)) / T_d))).
  ``warmup_steps`` and ``total_steps`` may be traced scalars."""
  warmup = jnp.asarray(warmup_steps, jnp.float32)
  decay_start = jnp.asarray(total_steps, jnp.float32) - decay_steps

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / jnp.maximum(warmup, 1.0)
    frac = jnp.clip((step - decay_start) / max(decay_steps, 1), 0.0, 1.0)
    fall = jnp.sqrt(frac) if shape == "one_minus_sqrt" else frac
    stable_or_decay = peak * (final_fraction + (1.0 - final_fraction) * (1.0 - fall))
    return jnp.where(step < warmup, warm, stable_or_decay)

  return lr


def _ramp(start: float, end: float, length) -> optax.Schedule:
  """optax.linear_schedule with a possibly traced ``length`` (>= 1)."""
  length = jnp.asarray(length, jnp.float32)
  return lambda count: (start - end) * (1 - jnp.clip(count, 0, length) / length) + end


def schedule(cfg: OptimConfig, total_steps) -> optax.Schedule:
  """The learning rate at each step of a run of ``total_steps`` -- a Python int, or a traced
  scalar: the train step reads it from its state, so a run compiles once whatever its length
  (and ``train.steps`` changes on resume without a recompile)."""
  total = jnp.asarray(total_steps, jnp.float32)
  if cfg.warmup_fraction is not None:  # round half to even, as Python's round()
    warmup_steps = jnp.round(jnp.float32(cfg.warmup_fraction) * total)
  else:
    warmup_steps = jnp.float32(cfg.warmup_steps)
  if cfg.schedule == "wsd":
    return warmup_stable_decay(cfg.learning_rate, warmup_steps, total, cfg.decay_steps,
                               cfg.final_lr_fraction, cfg.decay_shape)
  warmup = _ramp(0.0, cfg.learning_rate, jnp.maximum(warmup_steps, 1.0))
  if cfg.schedule == "constant":
    after = lambda count: jnp.full_like(count, cfg.learning_rate, jnp.float32)
  else:
    after = _ramp(cfg.learning_rate, 0.0, jnp.maximum(total - warmup_steps, 1.0))

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    return jnp.where(step < warmup_steps, warmup(step), after(step - warmup_steps))

  return lr


def layer_depth(path: tuple[str, ...], num_blocks: int) -> int:
  """0 for the embeddings, l + 1 for encoder block l, num_blocks for everything above."""
  if path[:2] in (("encoder", "embeddings"), ("encoder", "embedding_projection")):
    return 0
  if path[:2] == ("encoder", "layers"):
    return int(path[2]) + 1
  return num_blocks


def scale_by_layer_decay(decay: float, num_blocks: int) -> optax.GradientTransformation:
  """Multiply each update by decay^(L - depth) (ELECTRA's layer-wise LR decay; with AdamW the
  decoupled weight decay is scaled alike, as ELECTRA scales the whole update). ELECTRA's own
  code puts the head two levels above the top layer; this follows lr * decay^(L - l)."""

  def update_fn(updates, state, params=None):
    del params

    def one(path, u):
      names = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
      return u * decay ** (num_blocks - layer_depth(names, num_blocks))

    return jax.tree_util.tree_map_with_path(one, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def decay_mask(params):
  """True where weight decay applies: every parameter but biases and norm scales."""

  def keep(path, _):
    # the parameter's name is the last dict key (an nnx Variable adds a trailing `.value`)
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in NO_DECAY

  return jax.tree_util.tree_map_with_path(keep, params)


class StableAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _debias(beta: float, t: jax.Array) -> jax.Array:
  """optimi's debiased beta: (b^t - b) / (b^t - 1); 0 at t=1, -> b as t grows."""
  bt = jnp.power(beta, t.astype(jnp.float32))
  return (bt - beta) / (bt - 1.0)


def scale_by_stable_adam(b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                         weight_decay: float = 0.0, max_lr: float = 1.0,
                         mask=None) -> optax.GradientTransformation:
  """StableAdamW's direction (Wortsman et al. 2023; ModernBERT src/optimizer.py, optimi):

      m <- b1' m + (1 - b1') g,  v <- b2' v + (1 - b2') g^2     (debiased betas b')
      u  = (m / (sqrt(v) + eps) + weight_decay / max_lr * p) / max(1, RMS(g^2 / max(v, eps^2)))

  per tensor; chain with ``optax.scale_by_learning_rate``. The weight decay is fully decoupled
  (scaled by lr / max_lr, then clipped with the update). No gradient clipping is needed."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return StableAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

  def update_fn(grads, state, params=None):
    t = state.count + 1
    c1, c2 = _debias(b1, t), _debias(b2, t)
    mu = jax.tree.map(lambda m, g: c1 * m + (1 - c1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: c2 * v + (1 - c2) * jnp.square(g), state.nu, grads)
    decay = mask(params) if callable(mask) else jax.tree.map(lambda _: True, params)

    def one(g, m, v, p, d):
      rms = jnp.sqrt(jnp.mean(jnp.square(g) / jnp.maximum(v, eps * eps)))
      u = m / (jnp.sqrt(v) + eps)
      if weight_decay:
        u = u + jnp.where(d, weight_decay / max_lr, 0.0) * p
      return u / jnp.maximum(1.0, rms)

    updates = jax.tree.map(one, grads, mu, nu, params, decay)
    return updates, StableAdamState(t, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def stable_adamw(learning_rate, *, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.0, max_lr=1.0,
                 mask=None) -> optax.GradientTransformation:
  return optax.chain(scale_by_stable_adam(b1, b2, eps, weight_decay, max_lr, mask),
                     optax.scale_by_learning_rate(learning_rate))


def make_optimizer(cfg: OptimConfig, total_steps: int,
                   num_blocks: int | None = None) -> optax.GradientTransformation:
  """``num_blocks``: the encoder's parameter blocks, needed for ``cfg.layer_decay``."""
  lr = schedule(cfg, total_steps)
  if cfg.name == "stable_adamw":
    core = stable_adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        max_lr=cfg.learning_rate, mask=decay_mask)
  elif cfg.name == "lamb":
    core = optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  else:
    core = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  parts.append(core)
  if cfg.layer_decay is not None and cfg.layer_decay != 1.0:
    if num_blocks is None:
      raise ValueError("optim.layer_decay needs the model's number of blocks")
    parts.append(scale_by_layer_decay(cfg.layer_decay, num_blocks))
  return optax.chain(*parts)
