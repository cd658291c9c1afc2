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
