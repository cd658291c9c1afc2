"""Multi-head / grouped-query self-attention with padding, packed-segment and local-window masks.

The mask is described, not materialised, by ``AttentionMask``; each implementation builds what
it needs. Implementations behind one switch:
  * ``einsum``: the reference path; softmax in f32 with a finite fill; supports attention dropout.
  * ``xla``: ``jax.nn.dot_product_attention`` (fused by XLA); no dropout.
  * ``splash``: the TPU Pallas splash-attention kernel (interpret mode off TPU), in shard_map.
  * ``local``: block-wise sliding-window attention for local layers (O(len x window) memory).
  * ``flash``: chunked online-softmax attention with its own backward pass (``nn/flash.py``):
    O(len) memory in training too; no dropout.
  * ``cudnn``: cuDNN fused attention on NVIDIA GPUs (``nn/cudnn.py``): bf16/fp16, no local
    window, no dropout; a case it does not take falls back to what ``auto`` picks otherwise.
  * ``auto``: on TPU ``splash``; on GPU ``cudnn`` where it applies; elsewhere ``local`` for a
    window much shorter than the sequence, ``flash`` from ``FLASH_MIN_LENGTH`` tokens, else
    ``xla`` -- or ``einsum`` whenever attention dropout is active.
``attention_paths()`` says which implementation ran for each one asked for (and why another did),
as the model was traced; a fallback is also logged once.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bertjax.errors import UserError
from bertjax.nn import cudnn, splash
from bertjax.nn.flash import flash_attention
from bertjax.nn.layers import Dense, attention_scale, dropout, dtypes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Which keys each query may see. All fields optional; ``None`` everywhere = full attention.

  padding_mask: [batch, kv_len] bool, True for real tokens.
  segment_ids:  [batch, len] int, packed document ids (0 = padding); a query only sees keys of
                its own document.
  """

  padding_mask: jax.Array | None = None
  segment_ids: jax.Array | None = None

  def dense(self, q_len: int, kv_len: int, window: int | None = None) -> jax.Array | None:
    """A boolean ``[batch|1, 1, q_len, kv_len]`` mask (True = attend), or None for no masking."""
    mask = None

    def combine(m):
      return m if mask is None else jnp.logical_and(mask, m)

    if self.padding_mask is not None:
      mask = combine(self.padding_mask.astype(bool)[:, None, None, :])
    if self.segment_ids is not None:
      seg = self.segment_ids
      same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
      mask = combine(same[:, None])
    if window is not None:
      i = jnp.arange(q_len)[:, None]
      j = jnp.arange(kv_len)[None, :]
      mask = combine((jnp.abs(i - j) <= window)[None, None])
    return mask


def einsum_attention(q, k, v, mask, *, scale, dropout_rate=0.0, dropout_key=None):
  """q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim]."""
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, n // kv_heads, d)
  # [batch, kv_heads, group, q_len, kv_len]; scores and softmax in f32.
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # Finite fill (not -inf): a fully masked row stays finite (uniform) instead of NaN.
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = dropout(probs, dropout_rate, dropout_key).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


def local_attention(q, k, v, *, window: int, scale: float, padding_mask=None, segment_ids=None,
                    dropout_rate: float = 0.0, dropout_key=None):
  """Sliding-window attention (|i - j| <= window) computed block-wise: queries in blocks of
  ``window`` see only the previous, own and next key blocks, so memory and time grow as
  O(len x 3 window) -- no [len, len] score matrix is ever built."""
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  c = window
  nb = -(-t // c)
  pad = nb * c - t

  def blocks(x):  # [batch, len, ...] -> [batch, nb, c, ...], zero/False padded
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(b, nb, c, *x.shape[2:])

  def neighbours(x):  # [batch, len, ...] -> [batch, nb, 3c, ...]: previous, own, next block
    xb = blocks(x)
    widths = [(0, 0)] * (xb.ndim - 2)
    prev = jnp.pad(xb[:, :-1], [(0, 0), (1, 0)] + widths)
    nxt = jnp.pad(xb[:, 1:], [(0, 0), (0, 1)] + widths)
    return jnp.concatenate([prev, xb, nxt], axis=2)

  qb = blocks(q).reshape(b, nb, c, kv_heads, n // kv_heads, d)
  kb, vb = neighbours(k), neighbours(v)  # [batch, nb, 3c, kv_heads, head_dim]
  scores = jnp.einsum("bnqkgd,bnskd->bnkgqs", qb, kb, preferred_element_type=jnp.float32) * scale
  qi = jnp.arange(nb)[:, None] * c + jnp.arange(c)[None]  # [nb, c] query positions
  kj = jnp.arange(nb)[:, None] * c - c + jnp.arange(3 * c)[None]  # [nb, 3c] key positions
  mask = ((jnp.abs(qi[:, :, None] - kj[:, None, :]) <= window) & (kj[:, None, :] >= 0)
          & (kj[:, None, :] < t))[None]  # [1, nb, c, 3c]
  if padding_mask is not None:
    mask = mask & neighbours(padding_mask.astype(bool))[:, :, None, :]
  if segment_ids is not None:
    sq, sk = blocks(segment_ids), neighbours(segment_ids)
    mask = mask & (sq[:, :, :, None] == sk[:, :, None, :]) & (sk[:, :, None, :] != 0)
  scores = jnp.where(mask[:, :, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = dropout(probs, dropout_rate, dropout_key).astype(v.dtype)
  out = jnp.einsum("bnkgqs,bnskd->bnqkgd", probs, vb)
  # A query whose whole window is masked (padding) gets uniform weights over *all* keys in the
  # dense path (finite fill): the mean of v. Reproduce it so both paths agree everywhere.
  any_valid = mask.any(-1)[:, :, :, None, None, None]  # [batch|1, nb, c, 1, 1, 1]
  v_mean = v.mean(axis=1)[:, None, None, :, None, :]  # [batch, 1, 1, kv_heads, 1, head_dim]
  out = jnp.where(any_valid, out, v_mean.astype(out.dtype))
  return out.reshape(b, nb * c, n, d)[:, :t]


# From this length on (no TPU, no attention dropout) ``auto`` takes the chunked path. At 1024
# tokens it is already faster than XLA's fused dense path on CPU (ModernBERT 6 x 384: 199 vs 253
# us/token forward, benchmarks/long_context.py); shorter sequences stay on the fused path.
FLASH_MIN_LENGTH = 1024


def xla_attention(q, k, v, mask, *, scale):
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")


_PATHS: dict[str, set[str]] = {}  # attention_impl asked for -> what ran (and why, if another)


def attention_paths(clear: bool = False) -> dict[str, str]:
  """{attention_impl asked for: the implementations that ran (global and local layers may
  differ), each with the reason when it is not the one asked for}, over the models traced in
  this process since the last ``clear``."""
  paths = {k: "; ".join(sorted(v)) for k, v in _PATHS.items()}
  if clear:
    _PATHS.clear()
  return paths


def _ran(requested: str, impl: str, reason: str | None = None) -> None:
  text = impl if reason is None else f"{impl} ({reason})"
  seen = _PATHS.setdefault(requested, set())
  if text not in seen:
    seen.add(text)
    if reason is not None and requested == "cudnn":
      logging.getLogger("bertjax").warning("attention_impl=cudnn: %s ran instead: %s", impl,
                                           reason)


class Attention(nnx.Module):
  """Self-attention: query/key/value projections, an attention kernel, an output projection."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    h, n, kv, d = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    kw = dict(rngs=rngs, use_bias=cfg.use_bias, std=cfg.initializer_range, **dtypes(cfg))
    self.query = Dense(h, (n, d), axes=("embed", "heads", "head_dim"), **kw)
    self.key = Dense(h, (kv, d), axes=("embed", "kv_heads", "head_dim"), **kw)
    self.value = Dense(h, (kv, d), axes=("embed", "kv_heads", "head_dim"), **kw)
    self.out = Dense((n, d), h, axes=("heads", "head_dim", "embed"), **kw)
    self.scale = attention_scale(d)
    self.dropout_rate = cfg.attention_dropout
    self.impl = cfg.attention_impl

  def __call__(self, x: jax.Array, mask: AttentionMask, *, window: int | None = None,
               rope=None, dropout_key: jax.Array | None = None) -> jax.Array:
    """x: [batch, len, hidden]. ``window``: local attention half-width; ``rope``: a function
    applied to queries and keys ([batch, len, heads, head_dim])."""
    q, k, v = self.query(x), self.key(x), self.value(x)  # [batch, len, heads, head_dim]
    # names the remat policies can keep (config: model.remat_names)
    q, k, v = (checkpoint_name(q, "query_proj"), checkpoint_name(k, "key_proj"),
               checkpoint_name(v, "value_proj"))
    if rope is not None:
      q, k = rope(q), rope(k)
    t = x.shape[1]
    active_dropout = dropout_key is not None and self.dropout_rate > 0
    impl, reason = self.impl, None
    if impl in ("cudnn", "auto"):
      # cuDNN where it applies (GPU, bf16/fp16, no window, no dropout); a shape cuDNN rejects
      # when traced falls back too
      reason = cudnn.unsupported(q, window=window, active_dropout=active_dropout)
      if reason is None:
        try:
          out = cudnn.cudnn_attention(q, k, v, mask.dense(t, t), scale=self.scale)
        except Exception as e:  # noqa: BLE001 -- cuDNN's own "not supported" errors vary
          reason = f"cuDNN rejected it: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        else:
          _ran(self.impl, "cudnn")
          return self.out(checkpoint_name(out, "attention_out"))
      impl = "auto"
    if impl == "auto":
      # TPU (the mesh's devices, compile-only ones too): the Pallas splash kernel; elsewhere
      # block-local when a window is much shorter than the sequence, chunked online softmax for
      # long global attention (neither builds [len, len] scores), else the fused XLA path.
      if not active_dropout and splash.on_tpu() and splash.supported(t):
        impl = "splash"
      elif window is not None and t > 4 * window:
        impl = "local"
      else:
        impl = ("einsum" if active_dropout else "flash" if t >= FLASH_MIN_LENGTH else "xla")
    _ran(self.impl, impl, reason if self.impl == "cudnn" else None)
    if impl == "splash":
      if active_dropout:
        raise UserError("attention_impl=splash has no attention dropout; set "
                         "model.attention_dropout=0")
      out = splash.splash_attention(q, k, v, scale=self.scale, window=window,
                                    padding_mask=mask.padding_mask, segment_ids=mask.segment_ids)
    elif impl == "local" and window is not None:
      out = local_attention(q, k, v, window=window, scale=self.scale,
                            padding_mask=mask.padding_mask, segment_ids=mask.segment_ids,
                            dropout_rate=self.dropout_rate, dropout_key=dropout_key)
    elif impl == "flash":
      if active_dropout:
        raise UserError("attention_impl=flash has no attention dropout; use einsum or "
                         "model.attention_dropout=0")
      out = flash_attention(q, k, v, scale=self.scale, window=window,
                            padding_mask=mask.padding_mask, segment_ids=mask.segment_ids)
    elif impl == "xla" or (impl == "local" and not active_dropout):
      if active_dropout:
        raise UserError("attention_impl=xla has no attention dropout; use einsum or "
                         "model.attention_dropout=0")
      out = xla_attention(q, k, v, mask.dense(t, t, window), scale=self.scale)
    else:
      out = einsum_attention(q, k, v, mask.dense(t, t, window), scale=self.scale,
                             dropout_rate=self.dropout_rate, dropout_key=dropout_key)
    return self.out(checkpoint_name(out, "attention_out"))
