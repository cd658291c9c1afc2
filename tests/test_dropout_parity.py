"""Training-mode dropout matches transformers where the masks can't be shared: ModernBERT drops
its embeddings (embedding_dropout), its attention output (attention_dropout) and inside its MLP
before Wo (mlp_dropout). Over 300 dropout draws on one input, the spread of every output
matches transformers' (a misplaced dropout is off by x0.66-x6.5) and so do the means."""

import numpy as np
import pytest
import torch
import transformers as T
import jax
import jax.numpy as jnp
from flax import nnx

from hf_oracle import hf_model, import_into_bertjax

DRAWS = 300


@pytest.mark.parametrize("site", ["mlp_dropout", "attention_dropout", "embedding_dropout"])
def test_modernbert_dropout_statistics_match_transformers(site, tmp_path):
  rates = {"mlp_dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, site: 0.3}
  hf = hf_model("ModernBertModel", T.ModernBertConfig(
      vocab_size=101, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
      num_attention_heads=4, global_attn_every_n_layers=3, local_attention=8, pad_token_id=0,
      bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **rates))
  ours = import_into_bertjax(hf, tmp_path)
  ids = np.random.default_rng(0).integers(3, 101, (2, 12)).astype(np.int32)
  hf.train()
  torch.manual_seed(0)
  with torch.no_grad():
    theirs = np.stack([hf(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
                       for _ in range(DRAWS)])
  graphdef, state = nnx.split(ours)
  forward = jax.jit(lambda s, key: nnx.merge(graphdef, s)(
      jnp.asarray(ids), dropout_key=key).last_hidden_state)
  mine = np.stack([np.asarray(forward(state, jax.random.PRNGKey(i))) for i in range(DRAWS)])
  assert 0.95 <= mine.std(0).mean() / theirs.std(0).mean() <= 1.05
  standard_error = np.sqrt((mine.var(0) + theirs.var(0)) / DRAWS) + 1e-6
  assert np.mean(np.abs(mine.mean(0) - theirs.mean(0)) / standard_error) < 1.5  # ~0.8 if equal


def test_dropout_masks_are_bernoulli_and_independent():
  """``random_bits`` (the counter-based hash behind every dropout mask): the keep rate is
  1 - rate within binomial error, the bits are uniform, and masks are uncorrelated between
  neighbouring elements, rows, heads and keys (|corr| within 5 standard errors of 0)."""
  from bertjax.nn.layers import dropout, random_bits

  shape = (4, 8, 64, 64)  # [batch, heads, q, k], like attention probabilities
  n = np.prod(shape)
  for rate in (0.1, 0.5):
    keep = np.asarray(dropout(jnp.ones(shape), rate, jax.random.PRNGKey(0))) > 0
    assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    x = np.asarray(dropout(jnp.ones(shape), rate, jax.random.PRNGKey(1)))
    assert np.allclose(x[x > 0], 1 / (1 - rate))  # inverted dropout's scale
  bits = np.asarray(random_bits(jax.random.PRNGKey(2), shape))
  counts = np.bincount((bits >> 24).ravel(), minlength=256)  # top byte: chi-square, 255 dof
  assert ((counts - n / 256) ** 2 / (n / 256)).sum() < 255 + 5 * np.sqrt(2 * 255)
  assert len(np.unique(bits)) > 0.99 * n
  u = (bits / 2**32 - 0.5).astype(np.float64)
  other = np.asarray(random_bits(jax.random.PRNGKey(3), shape)) / 2**32 - 0.5
  split = jax.random.split(jax.random.PRNGKey(2))[0]  # how layers' keys are made
  sibling = np.asarray(random_bits(split, shape)) / 2**32 - 0.5
  pairs = {"next element": (u[..., 1:], u[..., :-1]), "next row": (u[:, :, 1:], u[:, :, :-1]),
           "next head": (u[:, 1:], u[:, :-1]), "next example": (u[1:], u[:-1]),
           "another key": (u, other), "a split key": (u, sibling)}
  upper = np.triu_indices(64, 1)  # (q, k) against (k, q), off the diagonal
  pairs["transposed"] = (u[..., upper[0], upper[1]], u[..., upper[1], upper[0]])
  for what, (a, b) in pairs.items():
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(a.size), (what, corr)
  # under sharding: the same mask on 8 devices as on one
  mesh = jax.make_mesh((len(jax.devices()),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.jit(lambda k: random_bits(k, shape), out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, "data")))(jax.random.PRNGKey(2))
  assert np.array_equal(np.asarray(sharded), bits)
