"""TPU Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) for the
shared attention block: full or local (+-window) masks, padding and packed documents as segment
ids, run per device inside ``jax.shard_map`` over the mesh (batch over data/fsdp, heads over
tensor). Selected automatically only on TPU; ``interpret=True`` runs the same kernel on CPU
for tests. No attention dropout (ModernBERT/EuroBERT train without it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bertjax import sharding


def on_tpu() -> bool:
  """Whether the attention runs on TPUs (``sharding.platform``)."""
  return sharding.platform() == "tpu"


def supported(seq_len: int) -> bool:
  return seq_len % 128 == 0  # splash tiles the sequence in blocks of 128 lanes


def _kernel(seq_len: int, heads: int, window: int | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  shape = (seq_len, seq_len)
  mask = sm.FullMask(shape) if window is None else sm.LocalMask(shape, (window, window), 0)
  # (not cached: the kernel holds mask-info arrays made under the current trace)
  block = min(512, seq_len)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def _per_device(q, k, v, segments, *, scale, window, interpret):
  """Local shards: q [b, t, n, d]; k, v [b, t, n, d]; segments [b, t] int32."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  b, t, n, d = q.shape
  kernel = _kernel(t, n, window, interpret)

  def one(q1, k1, v1, s1):  # [n, t, d] per example
    return kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=s1, kv=s1))

  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  out = jax.vmap(one)(heads_first(q * scale).astype(q.dtype), heads_first(k), heads_first(v),
                      segments)
  return heads_first(out)


def splash_attention(q, k, v, *, scale: float, window: int | None = None, padding_mask=None,
                     segment_ids=None, interpret: bool | None = None):
  """q: [batch, len, heads, head_dim]; k, v: [batch, len, kv_heads, head_dim]."""
  b, t, n, _ = q.shape
  if k.shape[2] != n:  # grouped-query attention: share each kv head across its query group
    k = jnp.repeat(k, n // k.shape[2], axis=2)
    v = jnp.repeat(v, n // v.shape[2], axis=2)
  segments = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  if padding_mask is not None:
    segments = segments * padding_mask.astype(jnp.int32)  # padding = segment 0
  interpret = (not on_tpu()) if interpret is None else interpret
  fn = functools.partial(_per_device, scale=scale, window=window, interpret=interpret)
  active = sharding.active_mesh()
  if active is None:
    return fn(q, k, v, segments)
  mesh, rules = active
  batch = sharding.logical_to_spec(("batch",), None, mesh, rules)[0]
  heads = sharding.logical_to_spec(("heads",), (n,), mesh, rules)[0]
  qkv_spec = P(batch, None, heads, None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch, None)),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, segments)
