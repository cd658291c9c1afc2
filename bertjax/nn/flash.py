"""Chunked self-attention with an online softmax (FlashAttention's algorithm, in plain JAX).

Queries are taken ``q_chunk`` at a time and keys ``kv_chunk`` at a time; a running maximum,
normaliser and weighted sum replace the ``[len, len]`` score matrix, so memory grows linearly with
length. The backward pass is written out (``jax.custom_vjp``): it saves only the output and the
softmax statistics and recomputes each score block, so training is linear in memory too (autodiff
through the scan would keep every block). This is the path off TPU for long sequences; on TPU the
splash kernel does the same in Pallas.

Masks mean exactly what they mean in the reference (``einsum``) path: masked scores get a finite
fill, so a query that may see no key at all (padding) gets uniform weights over every real key.
Positions past the sequence, added to round it up to whole chunks, are excluded outright. Without
masks (and with whole chunks) no mask work is done at all.

Layout: per chunk, the query heads of one kv head are stacked into one ``[group * q_chunk, dim]``
matrix, so every score block is a plain batched matmul against ``[kv_chunk, dim]`` keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG = float(jnp.finfo(jnp.float32).min)  # the reference path's fill for masked scores


def _chunks(x: jax.Array, c: int, axis: int = 1) -> jax.Array:
  """Split ``axis`` (the length) into zero-padded chunks of ``c``: the chunk index goes first."""
  t = x.shape[axis]
  n = -(-t // c)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, n * c - t)
  x = jnp.pad(x, widths)
  x = x.reshape(*x.shape[:axis], n, c, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _q_layout(x, kv_heads, q_chunk):
  """[b, t, heads, d] -> [nq, b, kv_heads, group * q_chunk, d] (group-major rows)."""
  b, t, n, d = x.shape
  g = n // kv_heads
  x = x.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4)  # [b, kv, g, t, d]
  x = _chunks(x, q_chunk, axis=3)  # [nq, b, kv, g, qc, d]
  return x.reshape(*x.shape[:3], g * q_chunk, d)


def _q_unlayout(x, t, n, q_chunk):
  """The inverse of ``_q_layout``: -> [b, t, heads, d]."""
  nq, b, kv, rows, d = x.shape
  g = rows // q_chunk
  x = x.reshape(nq, b, kv, g, q_chunk, d).transpose(1, 0, 4, 2, 3, 5)  # [b, nq, qc, kv, g, d]
  return x.reshape(b, nq * q_chunk, n, d)[:, :t]


def _kv_layout(x, kv_chunk):
  """[b, t, kv_heads, d] -> [nk, b, kv_heads, kv_chunk, d]."""
  return _chunks(x.transpose(0, 2, 1, 3), kv_chunk, axis=2)


def _kv_unlayout(x, t):
  nk, b, kv, c, d = x.shape
  return x.transpose(1, 0, 3, 2, 4).reshape(b, nk * c, kv, d)[:, :t]


def _stats_layout(x, g, q_chunk):
  """[b, t, kv, g] per-query numbers -> [nq, b, kv, g * q_chunk]."""
  x = _chunks(x.transpose(0, 2, 3, 1), q_chunk, axis=3)  # [nq, b, kv, g, qc]
  return x.reshape(*x.shape[:3], g * q_chunk)


class _Masks:
  """What each block must mask, decided statically: nothing at all for unmasked whole chunks."""

  def __init__(self, padding_mask, segment_ids, window, b, t, g, q_chunk, kv_chunk):
    self.window, self.t = window, t
    self.masked = padding_mask is not None or segment_ids is not None or window is not None
    self.ragged = t % kv_chunk != 0
    pad = jnp.ones((b, t), bool) if padding_mask is None else padding_mask.astype(bool)
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    nq, nk = -(-t // q_chunk), -(-t // kv_chunk)
    qpos = jnp.arange(nq * q_chunk, dtype=jnp.int32).reshape(nq, q_chunk)
    kpos = jnp.arange(nk * kv_chunk, dtype=jnp.int32).reshape(nk, kv_chunk)
    # per query row of a block (group-major, like the queries): [nq, (b), g * qc]
    self.q = (jnp.tile(qpos, (1, g)), jnp.tile(_chunks(seg, q_chunk), (1, 1, g)))
    self.k = (kpos, _chunks(seg, kv_chunk), _chunks(pad, kv_chunk))

  def apply(self, s, qi, ki):
    """s: [b, kv, rows, kc] -> (masked s, allowed [b|1, 1, rows, kc] or None)."""
    allowed = None
    if self.masked:
      qpos, qseg = qi
      kpos, kseg, kpad = ki
      allowed = kpad[:, None, :] & (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
      if self.window is not None:
        allowed = allowed & (jnp.abs(qpos[:, None] - kpos[None, :]) <= self.window)[None]
      allowed = allowed[:, None]
      s = jnp.where(allowed, s, NEG)
    if self.ragged:  # keys added to round the length up: excluded outright
      s = jnp.where((ki[0] < self.t)[None, None, None, :], s, -jnp.inf)
    return s, allowed


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  return _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk)[0]


def _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  masks = _Masks(padding_mask, segment_ids, window, b, t, g, q_chunk, kv_chunk)
  qs = _q_layout(q, kv_heads, q_chunk)  # [nq, b, kv, rows, d]
  ks, vs = _kv_layout(k, kv_chunk), _kv_layout(v, kv_chunk)  # [nk, b, kv, kc, d]
  rows = g * q_chunk

  def q_block(xs):
    qc, qi = xs[0], xs[1:]

    def kv_block(carry, ys):
      m, l, acc = carry  # [b, kv, rows], [b, kv, rows], [b, kv, rows, d]
      kc, vc, ki = ys[0], ys[1], ys[2:]
      s = jnp.einsum("bkrd,bksd->bkrs", qc, kc, preferred_element_type=jnp.float32) * scale
      s, _ = masks.apply(s, qi, ki)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      alpha = jnp.exp(m - m_new)
      l = l * alpha + p.sum(-1)
      acc = acc * alpha[..., None] + jnp.einsum("bkrs,bksd->bkrd", p.astype(vc.dtype), vc,
                                                preferred_element_type=jnp.float32)
      return (m_new, l, acc), None

    init = (jnp.full((b, kv_heads, rows), NEG, jnp.float32),
            jnp.zeros((b, kv_heads, rows), jnp.float32),
            jnp.zeros((b, kv_heads, rows, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_block, init, (ks, vs) + masks.k)
    return acc / l[..., None], m, l

  o, m, l = jax.lax.map(q_block, (qs,) + masks.q)  # [nq, b, kv, rows, (d)]
  out = _q_unlayout(o, t, n, q_chunk).astype(v.dtype)
  return out, (q, k, v, padding_mask, segment_ids, out, m, l)


def _flash_fwd(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  return _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk)


def _flash_bwd(scale, window, q_chunk, kv_chunk, res, dout):
  q, k, v, padding_mask, segment_ids, out, m, l = res
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  masks = _Masks(padding_mask, segment_ids, window, b, t, g, q_chunk, kv_chunk)
  f32 = lambda x: x.astype(jnp.float32)
  # D_i = sum_j P_ij dP_ij = dO_i . O_i per query, laid out like the saved m and l
  delta = jnp.einsum("btnd,btnd->btn", f32(dout), f32(out)).reshape(b, t, kv_heads, g)
  deltas = _stats_layout(delta, g, q_chunk)
  qs, dos = _q_layout(f32(q), kv_heads, q_chunk), _q_layout(f32(dout), kv_heads, q_chunk)
  ks, vs = _kv_layout(f32(k), kv_chunk), _kv_layout(f32(v), kv_chunk)

  def q_block(carry, xs):
    dk, dv = carry  # [nk, b, kv, kc, d] f32
    qc, doc, dc, mc, lc = xs[:5]
    qi = xs[5:]

    def kv_block(dq, ys):
      kc, vc, ki = ys[0], ys[1], ys[2:]
      s = jnp.einsum("bkrd,bksd->bkrs", qc, kc) * scale
      s, allowed = masks.apply(s, qi, ki)
      p = jnp.exp(s - mc[..., None]) / lc[..., None]  # [b, kv, rows, kc]
      dvc = jnp.einsum("bkrs,bkrd->bksd", p, doc)
      dp = jnp.einsum("bkrd,bksd->bkrs", doc, vc)
      ds = p * (dp - dc[..., None]) * scale
      if allowed is not None:
        ds = jnp.where(allowed, ds, 0.0)  # the finite fill carries no gradient
      dq = dq + jnp.einsum("bkrs,bksd->bkrd", ds, kc)
      dkc = jnp.einsum("bkrs,bkrd->bksd", ds, qc)
      return dq, (dkc, dvc)

    dq, (dkc, dvc) = jax.lax.scan(kv_block, jnp.zeros(qc.shape, jnp.float32), (ks, vs) + masks.k)
    return (dk + dkc, dv + dvc), dq

  zeros = jnp.zeros(ks.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(q_block, (zeros, zeros), (qs, dos, deltas, m, l) + masks.q)
  return (_q_unlayout(dq, t, n, q_chunk).astype(q.dtype), _kv_unlayout(dk, t).astype(k.dtype),
          _kv_unlayout(dv, t).astype(v.dtype), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, *, scale: float, padding_mask=None, segment_ids=None,
                    window: int | None = None, q_chunk: int = 512, kv_chunk: int = 512):
  """q: [batch, len, heads, dim]; k, v: [batch, len, kv_heads, dim] -> [batch, len, heads, dim].

  ``padding_mask`` [batch, len] (True = real token), ``segment_ids`` [batch, len] (0 = padding),
  ``window``: attend only to |i - j| <= window. Chunks are clipped to the length."""
  t = q.shape[1]
  q_chunk, kv_chunk = min(q_chunk, t), min(kv_chunk, t)
  return _flash(q, k, v, padding_mask, segment_ids, float(scale), window, q_chunk, kv_chunk)
