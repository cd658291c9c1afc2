"""cuDNN fused (flash) attention on NVIDIA GPUs: ``jax.nn.dot_product_attention(...,
implementation="cudnn")``, and when it applies.

The mask goes in as the dense boolean ``mask`` that the ``xla`` path takes too (padding and packed
segments in one; cuDNN applies it as a bias), never as sequence lengths or cuDNN's segment ids:
MaxText found cuDNN's segment-id path silently ignoring packed segments, and sequence lengths
only describe right padding. ``unsupported`` names what this path does not do -- the attention
falls back to ``xla`` then and says so (``attention.attention_paths``): f32 compute (cuDNN's
fused attention takes bf16/fp16), a bidirectional local window (cuDNN's windows are left-only),
attention dropout, a platform other than GPU, or a shape cuDNN rejects when it is traced.
``benchmarks/device_check.py`` checks the cuDNN path against the reference on the device for
padding, packed segments and GQA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bertjax import sharding


def unsupported(q: jax.Array, *, window: int | None, active_dropout: bool) -> str | None:
  """Why the cuDNN path cannot run this call (None: it can)."""
  if sharding.platform() != "gpu":
    return "not on a GPU"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"cuDNN fused attention takes bf16/fp16, the compute dtype is {q.dtype}"
  if window is not None:
    return "cuDNN has no bidirectional local window"
  if active_dropout:
    return "no attention dropout in this path"
  return None


def cudnn_attention(q, k, v, mask, *, scale):
  """q: [batch, len, heads, head_dim]; k, v: [batch, len, kv_heads, head_dim]; ``mask`` the
  dense boolean mask (or None)."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
