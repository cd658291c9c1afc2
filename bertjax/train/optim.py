"""Optax optimizers with the BERT recipe: no weight decay on biases and norm scales, linear
warmup then linear decay to zero, global-norm clipping."""

from __future__ import annotations

import jax
import optax

from bertjax.config import OptimConfig

NO_DECAY = ("bias", "scale")  # LayerNorm/RMSNorm scales and every bias (bert optimization.py)


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  else:
    after = optax.linear_schedule(cfg.learning_rate, 0.0, max(total_steps - cfg.warmup_steps, 1))
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(params):
  """True where weight decay applies: every parameter but biases and norm scales."""

  def keep(path, _):
    # the parameter's name is the last dict key (an nnx Variable adds a trailing `.value`)
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in NO_DECAY

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  lr = schedule(cfg, total_steps)
  if cfg.name == "lamb":
    core = optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  else:
    core = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  return optax.chain(*parts, core)
