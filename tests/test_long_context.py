"""ModernBERT at 8192 tokens runs on CPU, and local layers never build a [len, len] matrix
(checked on XLA's compiled memory plan, not on time)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax.config import model_config
from bertjax.models import Model
from bertjax.nn.attention import AttentionMask, einsum_attention, local_attention

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
