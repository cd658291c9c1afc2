"""Feed-forward blocks: dense (act(x W_i) W_o) and gated (act(x W_i) * (x W_gate)) W_o."""

from __future__ import annotations

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bertjax.nn.layers import ACTIVATIONS, Dense, dropout, dtypes


class Mlp(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    h, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(rngs=rngs, use_bias=cfg.use_bias, std=cfg.initializer_range, **dtypes(cfg))
    self.wi = Dense(h, f, axes=("embed", "mlp"), **kw)
    # GLU: the activated branch is wi, the linear (gate) branch multiplies it.
    self.wi_gate = Dense(h, f, axes=("embed", "mlp"), **kw) if cfg.mlp_type == "glu" else None
    self.wo = Dense(f, h, axes=("mlp", "embed"), **kw)
    self.act = cfg.hidden_act

  def __call__(self, x: jax.Array, dropout_rate: float = 0.0, dropout_key=None) -> jax.Array:
    """``dropout_rate``: dropout on the activations before W_o (ModernBERT's MLP dropout)."""
    y = ACTIVATIONS[self.act](checkpoint_name(self.wi(x), "mlp_in"))
    if self.wi_gate is not None:
      y = y * self.wi_gate(x)
    return self.wo(dropout(checkpoint_name(y, "mlp_act"), dropout_rate, dropout_key))
