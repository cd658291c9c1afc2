"""On 8 CPU devices every mesh shape gives the single-device outputs (<= 1e-5), and parameters
are sharded exactly as the logical-axis rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bertjax import sharding
from bertjax.config import model_config
from bertjax.models import Model
from bertjax.params import assign_flat_params, flat_params

MESHES = [(2, 2, 2), (8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 1, 4), (1, 4, 2)]


def tiny(family="bert", **kw):
  base = dict(family=family, vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
              intermediate_size=64, max_position_embeddings=32)
  if family in ("albert", "electra"):
    base["embedding_size"] = 16
  if family in ("modernbert", "eurobert"):
    base.update(pad_token_id=0, local_window=4, num_kv_heads=2 if family == "eurobert" else None)
  return model_config({**base, **kw})


def batch(cfg, n=8, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, cfg.vocab_size, (n, length)).astype(np.int32)
  mask = np.ones((n, length), bool)
  mask[1::2, 10:] = False
  return ids, mask


def head_output(out):
  return out.mlm_logits if out.mlm_logits is not None else out.rtd_logits


def sharded_forward(cfg, mesh, ids, mask):
  with sharding.use_mesh(mesh):
    model = sharding.create_sharded(lambda: Model(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    state_sh = sharding.state_shardings(state, mesh)
    data_sh = sharding.batch_sharding(mesh)

    @jax.jit
    def forward(state, ids, mask):
      out = nnx.merge(graphdef, state)(ids, padding_mask=mask)
      return out.last_hidden_state, head_output(out)

    fwd = jax.jit(forward, in_shardings=(state_sh, data_sh, data_sh))
    hidden, logits = fwd(state, jax.device_put(ids, data_sh), jax.device_put(mask, data_sh))
  return model, hidden, logits


CASES = [("bert", m) for m in MESHES] + [("albert", (2, 2, 2)), ("electra", (1, 2, 4)),
                                         ("modernbert", (2, 2, 2)), ("eurobert", (1, 4, 2))]


@pytest.mark.parametrize("family,shape", CASES, ids=lambda x: x if isinstance(x, str) else "x".join(map(str, x)))
def test_sharded_forward_equals_single_device(family, shape):
  assert jax.device_count() == 8
  cfg = tiny(family)
  ids, mask = batch(cfg)
  mesh = sharding.make_mesh(shape)
  model, hidden, logits = sharded_forward(cfg, mesh, ids, mask)
  single = Model(cfg, rngs=nnx.Rngs(1))
  assign_flat_params(single, {k: np.asarray(v) for k, v in flat_params(model).items()})
  ref = single(jnp.asarray(ids), padding_mask=jnp.asarray(mask))
  assert np.max(np.abs(np.asarray(hidden) - np.asarray(ref.last_hidden_state))) <= 1e-5
  assert np.max(np.abs(np.asarray(logits) - np.asarray(head_output(ref)))) <= 1e-5


def test_parameters_are_sharded_as_the_rules_say():
  cfg = tiny()
  mesh = sharding.make_mesh((2, 2, 2))
  model = sharding.create_sharded(lambda: Model(cfg, rngs=nnx.Rngs(0)), mesh)
  params = flat_params(model)
  expected = {
      "encoder.embeddings.word.embedding": P("tensor", "fsdp"),  # (vocab, embed)
      "encoder.embeddings.position.embedding": P(None, "fsdp"),
      "encoder.layers.0.attention.query.kernel": P("fsdp", "tensor", None),
      "encoder.layers.0.attention.query.bias": P("tensor", None),
      "encoder.layers.0.attention.out.kernel": P("tensor", None, "fsdp"),
      "encoder.layers.0.mlp.wi.kernel": P("fsdp", "tensor"),
      "encoder.layers.0.mlp.wo.kernel": P("tensor", "fsdp"),
      "encoder.layers.0.attention_norm.scale": P(None),
      "encoder.pooler.dense.kernel": P("fsdp", "tensor"),
      "mlm.bias": P("tensor"),
  }
  for name, spec in expected.items():
    arr = params[name]
    assert arr.sharding.spec == spec, (name, arr.sharding.spec)
    shard_shape = arr.addressable_shards[0].data.shape
    expect_shape = tuple(d // (1 if a is None else mesh.shape[a])
                         for d, a in zip(arr.shape, list(spec) + [None] * (arr.ndim - len(spec))))
    assert shard_shape == expect_shape, (name, shard_shape, expect_shape)


def test_indivisible_dimensions_fall_back_to_replication():
  """3 heads on a tensor axis of 2 cannot split: that dimension stays replicated."""
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (36, 3, 12), mesh) == \
      P("fsdp", None, None)
  assert sharding.logical_to_spec(("vocab", "embed"), (97, 36), mesh) == P(None, "fsdp")
  # a mesh axis is never used twice in one spec
  assert sharding.logical_to_spec(("embed", "embed"), (32, 32), mesh) == P("fsdp", None)


def test_odd_head_model_runs_sharded():
  cfg = tiny(hidden_size=36, num_heads=3, vocab_size=97)
  ids, mask = batch(cfg)
  mesh = sharding.make_mesh((2, 2, 2))
  model, hidden, logits = sharded_forward(cfg, mesh, ids, mask)
  spec = flat_params(model)["encoder.layers.0.attention.query.kernel"].sharding.spec
  assert spec == P("fsdp", None, None)  # 3 heads: the tensor axis cannot split them
  single = Model(cfg, rngs=nnx.Rngs(1))  # one device, another init, the sharded model's values
  assign_flat_params(single, {k: np.asarray(v) for k, v in flat_params(model).items()})
  ref = single(jnp.asarray(ids), padding_mask=jnp.asarray(mask))
  assert np.max(np.abs(np.asarray(hidden) - np.asarray(ref.last_hidden_state))) <= 1e-5
  assert np.max(np.abs(np.asarray(logits) - np.asarray(head_output(ref)))) <= 1e-5


def test_make_mesh_validates_shapes():
  assert dict(sharding.make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "fsdp": 1,
                                                                      "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 2, 2))
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh((-1, -1, 2))
  mesh = sharding.make_mesh((2, 2, 2))
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
