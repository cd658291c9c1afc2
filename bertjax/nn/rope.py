"""Rotary position embeddings (Su et al. 2021) in the rotate-half layout that transformers,
ModernBERT and EuroBERT use: ``x * cos + rotate_half(x) * sin`` with cos/sin of
``cat(freqs, freqs)``, computed in f32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """x: [batch, len, heads, head_dim]; positions: [batch, len]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, len, d/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :d // 2], xf[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)
