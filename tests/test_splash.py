"""The TPU Pallas splash-attention path, run in interpret mode on CPU, equals the reference
einsum path (full and local masks, packed segments, padding, GQA), also inside shard_map on a
sharded 8-device mesh; it is never picked automatically off TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax import sharding
from bertjax.config import model_config
from bertjax.models import Model
from bertjax.nn import splash
from bertjax.nn.attention import AttentionMask, einsum_attention

T = 128


def qkv(kv_heads=2, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(2, T, 4, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, T, kv_heads, 16)), jnp.float32) for _ in range(2))
  return q, k, v


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_splash_interpret_equals_reference(window, kv_heads):
  q, k, v = qkv(kv_heads)
  pad = np.ones((2, T), bool)
  pad[1, 97:] = False
  seg = np.ones((2, T), np.int32)
  seg[0, 50:] = 2
  seg[0, 90:] = 3
  out = splash.splash_attention(q, k, v, scale=0.25, window=window, padding_mask=jnp.asarray(pad),
                                segment_ids=jnp.asarray(seg), interpret=True)
  ref = einsum_attention(q, k, v, AttentionMask(jnp.asarray(pad), jnp.asarray(seg)).dense(T, T, window),
                         scale=0.25)
  assert np.max(np.abs(np.asarray(out - ref)) * pad[..., None, None]) <= 1e-5


def tiny_modernbert(impl):
  return model_config({"family": "modernbert", "vocab_size": 96, "hidden_size": 32,
                       "num_layers": 3, "num_heads": 4, "intermediate_size": 40,
                       "local_window": 8, "global_every": 2, "pad_token_id": 0,
                       "attention_impl": impl, "max_position_embeddings": T})


def test_splash_model_inside_shard_map_matches_reference():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 96, (8, T)).astype(np.int32)
  mask = np.ones_like(ids, bool)
  mask[1::2, 100:] = False
  ref_model = Model(tiny_modernbert("einsum"), rngs=nnx.Rngs(0))
  ref = np.asarray(ref_model(jnp.asarray(ids), padding_mask=jnp.asarray(mask)).last_hidden_state)
  mesh = sharding.make_mesh((2, 2, 2))
  with sharding.use_mesh(mesh):
    model = sharding.create_sharded(lambda: Model(tiny_modernbert("splash"), rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    data = sharding.batch_sharding(mesh)
    forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, padding_mask=m).last_hidden_state)
    out = forward(state, jax.device_put(ids, data), jax.device_put(mask, data))
  assert np.max(np.abs((np.asarray(out) - ref) * mask[..., None])) <= 1e-5


def test_auto_never_selects_splash_off_tpu():
  assert not splash.on_tpu()
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(3, 96, (2, T)))
  a = Model(tiny_modernbert("auto"), rngs=nnx.Rngs(0))(ids).last_hidden_state
  b = Model(tiny_modernbert("xla"), rngs=nnx.Rngs(0))(ids).last_hidden_state
  assert np.max(np.abs(np.asarray(a - b))) <= 1e-5
