"""ModernBERT at 8192 tokens runs on CPU; local layers and the chunked (flash-style) global path
never build a [len, len] matrix (checked on XLA's compiled memory plan, not on time), and the
chunked path equals the reference forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax.config import model_config
from bertjax.models import Model
import pytest

from bertjax.nn import attention as attention_module
from bertjax.nn.attention import AttentionMask, einsum_attention, local_attention
from bertjax.nn.flash import flash_attention

LONG = 8192


def temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_local_attention_memory_is_linear_in_length():
  shapes = [jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32) for n in (2048, LONG)]
  fn = lambda q, k, v: local_attention(q, k, v, window=64, scale=0.25)
  small, large = (temp_bytes(fn, s, s, s) for s in shapes)
  dense = temp_bytes(lambda q, k, v: einsum_attention(
      q, k, v, AttentionMask().dense(LONG, LONG, 64), scale=0.25), *[shapes[1]] * 3)
  assert dense >= 2 * LONG * LONG * 4  # the dense path holds [heads, len, len] f32 scores
  assert large * 10 < dense
  assert large <= 4.5 * small  # ~4x the tokens -> ~4x the memory, not 16x


def test_modernbert_runs_at_8192_tokens_on_cpu():
  cfg = model_config({"family": "modernbert", "vocab_size": 128, "hidden_size": 32,
                      "num_layers": 3, "num_heads": 2, "intermediate_size": 48,
                      "pad_token_id": 0, "max_position_embeddings": LONG})
  model = Model(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 128, (1, LONG)))
  graphdef, state = nnx.split(model)
  out = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i).mlm_logits)(state, ids)
  assert out.shape == (1, LONG, 128) and bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("window,t", [(None, 37), (5, 37), (None, 32)])
def test_flash_attention_equals_reference_forward_and_gradients(window, t):
  """Padding, packed segments (a fully masked padding row included), GQA, a local window, a
  length that is not a whole number of chunks and one that is (no masking work at all without
  masks): outputs and q/k/v gradients <= 1e-5."""
  rng = np.random.default_rng(0)
  b, n, kv, d = 2, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32) for _ in range(2))
  pad = np.ones((b, t), bool)
  pad[1, 20:] = False
  seg = np.ones((b, t), np.int32)
  seg[0, 15:], seg[0, 28:] = 2, 0
  w = jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32)
  for pm, sg in [(None, None), (pad, None), (None, seg), (pad, seg)]:
    mask = AttentionMask(None if pm is None else jnp.asarray(pm),
                         None if sg is None else jnp.asarray(sg))
    ref = lambda q, k, v: einsum_attention(q, k, v, mask.dense(t, t, window), scale=0.3)
    fl = lambda q, k, v: flash_attention(q, k, v, scale=0.3, window=window, q_chunk=8,
                                         kv_chunk=16, padding_mask=mask.padding_mask,
                                         segment_ids=mask.segment_ids)
    np.testing.assert_allclose(fl(q, k, v), ref(q, k, v), atol=1e-5, rtol=0)
    g_ref = jax.grad(lambda *x: (ref(*x) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    g_fl = jax.grad(lambda *x: (fl(*x) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, c in zip(g_fl, g_ref):
      np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)


def test_flash_attention_memory_is_linear_in_length_forward_and_backward():
  shapes = [jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32) for n in (2048, LONG)]
  fwd = lambda q, k, v: flash_attention(q, k, v, scale=0.25)
  grad = jax.grad(lambda q, k, v: (flash_attention(q, k, v, scale=0.25) ** 2).sum(),
                  argnums=(0, 1, 2))
  dense = temp_bytes(lambda q, k, v: einsum_attention(q, k, v, None, scale=0.25), *[shapes[1]] * 3)
  assert dense >= 2 * LONG * LONG * 4
  for fn in (fwd, grad):
    small, large = (temp_bytes(fn, s, s, s) for s in shapes)
    assert large * 20 < dense
    assert large <= 4.5 * small


def test_auto_picks_flash_for_long_global_attention(monkeypatch):
  """attention_impl=auto off TPU: a long global layer runs the chunked path."""
  calls = []
  real = attention_module.flash_attention
  monkeypatch.setattr(attention_module, "flash_attention",
                      lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
  cfg = model_config({"family": "modernbert", "vocab_size": 64, "hidden_size": 16,
                      "num_layers": 3, "num_heads": 2, "intermediate_size": 24,
                      "pad_token_id": 0, "max_position_embeddings": 4096, "local_window": 64,
                      "global_every": 3})
  model = Model(cfg, rngs=nnx.Rngs(0))
  model(jnp.ones((1, attention_module.FLASH_MIN_LENGTH), jnp.int32))
  assert len(calls) == 1  # the one global layer; local layers stay block-local
  calls.clear()
  model(jnp.ones((1, 256), jnp.int32))
  assert not calls
