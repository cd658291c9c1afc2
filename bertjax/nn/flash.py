"""Chunked self-attention with an online softmax (FlashAttention's algorithm, in plain JAX).

Queries are taken ``q_chunk`` at a time and keys ``kv_chunk`` at a time; a running maximum,
normaliser and weighted sum replace the ``[len, len]`` score matrix, so memory grows linearly with
length. The backward pass is written out (``jax.custom_vjp``): it saves only the output and the
softmax statistics and recomputes each score block, so training is linear in memory too (autodiff
through the scan would keep every block). This is the path off TPU for long sequences; on TPU the
splash kernel does the same in Pallas.

Masks mean exactly what they mean in the reference (``einsum``) path: masked scores get a finite
fill, so a query that may see no key at all (padding) gets uniform weights over every real key.
Positions past the sequence, added to round it up to whole chunks, are excluded outright.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG = float(jnp.finfo(jnp.float32).min)  # the reference path's fill for masked scores


def _chunks(x: jax.Array, c: int) -> jax.Array:
  """[batch, len, ...] -> [len / c, batch, c, ...], zero-padded to whole chunks."""
  b, t = x.shape[:2]
  n = -(-t // c)
  x = jnp.pad(x, [(0, 0), (0, n * c - t)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)


def _unchunk(x: jax.Array, t: int) -> jax.Array:
  """The inverse of ``_chunks``: [n, batch, c, ...] -> [batch, t, ...]."""
  n, b, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])[:, :t]


def _scores(qc, kc, qi, ki, *, scale, t, window):
  """One block of scores, masked as the reference masks them.

  qc: [batch, qc, kv_heads, group, dim]; kc: [batch, kc, kv_heads, dim];
  qi / ki: (positions [c], segment ids [batch, c], key padding [batch, c] (keys only)).
  -> (scores [batch, kv_heads, group, qc, kc] f32, allowed [batch|1, 1, 1, qc, kc])."""
  qpos, qseg = qi
  kpos, kseg, kpad = ki
  s = jnp.einsum("bqkgd,bskd->bkgqs", qc, kc, preferred_element_type=jnp.float32) * scale
  allowed = kpad[:, None, :] & (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
  if window is not None:
    allowed = allowed & (jnp.abs(qpos[:, None] - kpos[None, :]) <= window)[None]
  allowed = allowed[:, None, None]
  s = jnp.where(allowed, s, NEG)
  s = jnp.where((kpos < t)[None, None, None, None, :], s, -jnp.inf)  # round-up keys: excluded
  return s, allowed


def _prepare(q, k, padding_mask, segment_ids, q_chunk, kv_chunk):
  b, t = q.shape[:2]
  pad = jnp.ones((b, t), bool) if padding_mask is None else padding_mask.astype(bool)
  seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  nq, nk = -(-t // q_chunk), -(-t // kv_chunk)
  qinfo = (jnp.arange(nq * q_chunk, dtype=jnp.int32).reshape(nq, q_chunk),
           _chunks(seg, q_chunk))
  kinfo = (jnp.arange(nk * kv_chunk, dtype=jnp.int32).reshape(nk, kv_chunk),
           _chunks(seg, kv_chunk), _chunks(pad, kv_chunk))
  return qinfo, kinfo


def _group(q, kv_heads):
  b, t, n, d = q.shape
  return q.reshape(b, t, kv_heads, n // kv_heads, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  return _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk)[0]


def _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  qinfo, kinfo = _prepare(q, k, padding_mask, segment_ids, q_chunk, kv_chunk)
  qs = _chunks(_group(q, kv_heads), q_chunk)  # [nq, b, qc, kv, g, d]
  ks, vs = _chunks(k, kv_chunk), _chunks(v, kv_chunk)  # [nk, b, kc, kv, d]

  def q_block(xs):
    qc, qi = xs[0], xs[1:]

    def kv_block(carry, ys):
      m, l, acc = carry  # [b, kv, g, qc], [b, kv, g, qc], [b, kv, g, qc, d]
      kc, vc, ki = ys[0], ys[1], ys[2:]
      s, _ = _scores(qc, kc, qi, ki, scale=scale, t=t, window=window)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      alpha = jnp.exp(m - m_new)
      l = l * alpha + p.sum(-1)
      acc = acc * alpha[..., None] + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(vc.dtype), vc,
                                                preferred_element_type=jnp.float32)
      return (m_new, l, acc), None

    init = (jnp.full((b, kv_heads, g, q_chunk), NEG, jnp.float32),
            jnp.zeros((b, kv_heads, g, q_chunk), jnp.float32),
            jnp.zeros((b, kv_heads, g, q_chunk, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_block, init, (ks, vs) + kinfo)
    return acc / l[..., None], m, l

  o, m, l = jax.lax.map(q_block, (qs,) + qinfo)  # [nq, b, kv, g, qc, (d)]
  out = jnp.einsum("nbkgqd->nbqkgd", o)
  out = _unchunk(out, t).reshape(b, t, n, d).astype(v.dtype)
  return out, (q, k, v, padding_mask, segment_ids, out, m, l)


def _flash_fwd(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk):
  return _forward(q, k, v, padding_mask, segment_ids, scale, window, q_chunk, kv_chunk)


def _flash_bwd(scale, window, q_chunk, kv_chunk, res, dout):
  q, k, v, padding_mask, segment_ids, out, m, l = res
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  qinfo, kinfo = _prepare(q, k, padding_mask, segment_ids, q_chunk, kv_chunk)
  dout = _group(dout, kv_heads).astype(jnp.float32)
  # D_i = sum_j P_ij dP_ij = dO_i . O_i, per query: [nq, b, kv, g, qc] like the saved m and l
  delta = jnp.einsum("btkgd,btkgd->btkg", dout, _group(out, kv_heads).astype(jnp.float32))
  deltas = jnp.moveaxis(_chunks(delta, q_chunk), 2, -1)
  qs = _chunks(_group(q, kv_heads), q_chunk)  # [nq, b, qc, kv, g, d]
  dos = _chunks(dout, q_chunk)
  ks, vs = _chunks(k, kv_chunk), _chunks(v, kv_chunk)
  nk = ks.shape[0]

  def q_block(carry, xs):
    dk, dv = carry  # [nk, b, kc, kv, d] f32
    qc, doc, dc, mc, lc = xs[:5]
    qi = xs[5:]

    def kv_block(dq, ys):
      kc, vc, ki = ys[0], ys[1], ys[2:]
      s, allowed = _scores(qc, kc, qi, ki, scale=scale, t=t, window=window)
      p = jnp.exp(s - mc[..., None]) / lc[..., None]  # [b, kv, g, qc, kc]
      dvc = jnp.einsum("bkgqs,bqkgd->bskd", p, doc)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", doc, vc.astype(jnp.float32))
      ds = jnp.where(allowed, p * (dp - dc[..., None]), 0.0) * scale  # fill: no gradient
      dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds, kc.astype(jnp.float32))
      dkc = jnp.einsum("bkgqs,bqkgd->bskd", ds, qc.astype(jnp.float32))
      return dq, (dkc, dvc)

    dq, (dkc, dvc) = jax.lax.scan(kv_block, jnp.zeros(qc.shape, jnp.float32), (ks, vs) + kinfo)
    return (dk + dkc, dv + dvc), dq

  zeros = jnp.zeros((nk,) + ks.shape[1:], jnp.float32)
  (dk, dv), dq = jax.lax.scan(q_block, (zeros, zeros), (qs, dos, deltas, m, l) + qinfo)
  dq = _unchunk(dq, t).reshape(b, t, n, d).astype(q.dtype)
  return dq, _unchunk(dk, t).astype(k.dtype), _unchunk(dv, t).astype(v.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, *, scale: float, padding_mask=None, segment_ids=None,
                    window: int | None = None, q_chunk: int = 512, kv_chunk: int = 512):
  """q: [batch, len, heads, dim]; k, v: [batch, len, kv_heads, dim] -> [batch, len, heads, dim].

  ``padding_mask`` [batch, len] (True = real token), ``segment_ids`` [batch, len] (0 = padding),
  ``window``: attend only to |i - j| <= window. Chunks are clipped to the length."""
  t = q.shape[1]
  q_chunk, kv_chunk = min(q_chunk, t), min(kv_chunk, t)
  return _flash(q, k, v, padding_mask, segment_ids, float(scale), window, q_chunk, kv_chunk)
