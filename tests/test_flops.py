"""The MFU numerator counts every matmul FLOP the step executes: checked against XLA's own
count of the compiled train step for MLM, ELECTRA (generator + discriminator) and distillation
(student + frozen teacher)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from bertjax.config import DistillConfig, experiment_config, model_config
from bertjax.models import Model
from bertjax.objectives import DistillObjective, ElectraObjective, MlmObjective
from bertjax.objectives.distill import student_config
from bertjax.train.flops import step_flops_per_token
from bertjax.train.optim import make_optimizer
from bertjax.train.step import init_state, make_train_step

B, T, P, V = 8, 64, 10, 1024  # wide enough that matmuls dominate XLA's count
BASE = dict(family="bert", vocab_size=V, hidden_size=128, num_layers=2, num_heads=4,
            intermediate_size=512, hidden_dropout=0.0, attention_dropout=0.0,
            max_position_embeddings=T)


def batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, V, (B, T)).astype(np.int32)
  return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
          "padding_mask": np.ones((B, T), bool),
          "masked_positions": rng.integers(1, T, (B, P)).astype(np.int32),
          "masked_ids": rng.integers(5, V, (B, P)).astype(np.int32),
          "masked_weights": np.ones((B, P), np.float32),
          "seq_relationship_label": rng.integers(0, 2, B).astype(np.int32)}


def xla_flops(model_cfg, objective, frozen=None) -> float:
  graphdef, params = nnx.split(Model(model_cfg, rngs=nnx.Rngs(0)))
  tx = make_optimizer(experiment_config().optim, 10)
  state = init_state(graphdef, params, tx, 0, frozen)
  compiled = jax.jit(make_train_step(graphdef, objective, tx)).lower(state, batch()).compile()
  analysis = compiled.cost_analysis()
  return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"]


@pytest.mark.parametrize("objective", ["mlm", "electra", "distill"])
def test_step_flops_match_the_compiled_step(objective):
  over = ["train.batch_size=8", f"data.max_seq_length={T}", f"data.max_predictions_per_seq={P}",
          f"objective={objective}"]
  teacher = frozen = None
  if objective == "mlm":
    model, loss = model_config(BASE), MlmObjective()
  elif objective == "electra":
    model = model_config({**BASE, "family": "electra", "heads": ["rtd"], "embedding_size": 64,
                          "generator_width_fraction": 0.5})
    loss = ElectraObjective()
  else:
    teacher = model_config({**BASE, "num_layers": 4, "heads": ["mlm"]})
    model = student_config(teacher, (0, 2))
    teacher_graphdef, frozen = nnx.split(Model(teacher, rngs=nnx.Rngs(1)))
    loss = DistillObjective(teacher_graphdef, DistillConfig(layers=(0, 2)))
  cfg = dataclasses.replace(experiment_config(None, over), model=model)
  analytic = step_flops_per_token(cfg, teacher) * B * T
  # XLA also counts element-wise work (softmax, norms, Adam): a few percent above the matmuls
  assert 0.85 <= analytic / xla_flops(model, loss, frozen) <= 1.0


def test_local_layers_count_their_window_only():
  """ModernBERT's local layers attend over 2w+1 keys: the model FLOPs (and so the MFU) count
  that window, not the whole sequence (MaxText's sliding-window convention)."""
  from bertjax.train.flops import forward_flops_per_token, kernel_attention_flops_per_token

  seq, w = 8192, 64
  local = model_config(dict(BASE, num_layers=3, local_window=w,
                            global_every=3))
  full = dataclasses.replace(local, local_window=None)
  n, d = local.num_heads, local.dim_per_head
  saved = 2 * 4 * n * d * (seq - (2 * w + 1))  # two local layers: scores + values, forward
  assert forward_flops_per_token(full, seq, 0.0) - forward_flops_per_token(local, seq, 0.0) \
      == pytest.approx(saved)
  assert kernel_attention_flops_per_token(local, seq) == pytest.approx(
      4 * n * d * (seq + 2 * (2 * w + 1)))


@pytest.mark.parametrize("family", ["eurobert", "modernbert"])
def test_glu_and_gqa_blocks_count_like_the_compiled_step(family):
  """GLU MLPs (3 matmuls) and grouped-query attention (fewer k/v heads) in the model FLOPs."""
  extra = {"num_kv_heads": 2} if family == "eurobert" else {}
  model = model_config({**BASE, "family": family, "pad_token_id": 0, **extra})
  assert model.mlp_type == "glu" and (family != "eurobert" or model.kv_heads == 2)
  over = ["train.batch_size=8", f"data.max_seq_length={T}", f"data.max_predictions_per_seq={P}"]
  cfg = dataclasses.replace(experiment_config(None, over), model=model)
  assert 0.85 <= step_flops_per_token(cfg) * B * T / xla_flops(model, MlmObjective()) <= 1.0
