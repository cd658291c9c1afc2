"""ELECTRA's recipe: 85% [MASK] / 15% unchanged generator input, replaced labels exactly where
a sample differs from the original, a falling loss in the shared engine, and the discriminator
exported as ElectraForPreTraining."""


import jax
import jax.numpy as jnp
import numpy as np
import transformers as T
from flax import nnx

from bertjax import cli
from bertjax.config import model_config
from bertjax.data.masking import MaskingSpec, mask_instance
from bertjax.models import Model
from bertjax.objectives import ElectraObjective
from bertjax.train.pretrain import pretrain

from hf_oracle import max_diff, run_hf
from pretrain_helpers import small_corpus, train_losses
from test_masking import random_instance, sigma3

MASK = 4


def test_generator_input_is_85_mask_15_unchanged():
  spec = MaskingSpec(mask_id=MASK, vocab_size=1000, max_predictions=1000, mask_token_prob=0.85,
                     random_token_prob=0.0)
  rng = np.random.default_rng(0)
  masked = same = 0
  for i in range(300):
    x = random_instance(rng)
    ids, pos, _, w = mask_instance(x, spec, np.random.default_rng([5, i]))
    p = pos[:int(w.sum())]
    masked += int((ids[p] == MASK).sum())
    same += int((ids[p] == x.ids[p]).sum())
  total = masked + same  # nothing else: no random tokens
  assert abs(masked / total - 0.85) <= sigma3(0.85, total)


def tiny_electra():
  return model_config({"family": "electra", "vocab_size": 50, "embedding_size": 16,
                       "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 48,
                       "generator_width_fraction": 0.5, "hidden_dropout": 0.0,
                       "attention_dropout": 0.0})


def test_replaced_labels_follow_the_samples():
  model = Model(tiny_electra(), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 50, (4, 12)).astype(np.int32)
  positions = np.sort(rng.choice(np.arange(1, 11), (4, 3), replace=True), axis=1).astype(np.int32)
  positions[:, 1] = positions[:, 0] + 1
  positions[:, 2] = positions[:, 1] + 1
  weights = np.ones((4, 3), np.float32)
  weights[3, 2] = 0.0
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids, bool),
           "masked_positions": positions, "masked_ids": np.take_along_axis(ids, positions, 1),
           "masked_weights": weights}
  obj = ElectraObjective()
  loss, sums = obj(model, batch, jax.random.PRNGKey(0), obj.totals(batch))
  assert np.isfinite(float(loss))
  assert 0 <= float(sums["replaced"]) <= float(weights.sum())  # only sampled positions can differ
  assert float(sums["rtd_count"]) == ids.size
  m = obj.finalize(jax.device_get(sums))
  assert 0.0 <= m["rtd_auc"] <= 1.0 and 0.0 <= m["replaced_fraction"] <= 3 / 12


def test_electra_trains_and_exports_its_discriminator(tmp_path):
  corpus = small_corpus(tmp_path / "books.txt")
  run = tmp_path / "run"
  from bertjax.config import experiment_config

  cfg = experiment_config("electra-tiny", [
      f"run_dir={run}", f"data.source={corpus}", "model.hidden_size=64", "model.num_layers=2",
      "model.intermediate_size=128", "model.embedding_size=32", "train.steps=40",
      "train.batch_size=16", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=2",
      "optim.learning_rate=2e-3", "optim.warmup_steps=5", "data.max_seq_length=64",
      "train.peak_flops_per_device=1e9"])
  result = pretrain(cfg, quiet=True)
  losses = train_losses(run)
  first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (38, 39, 40)])
  assert last < first  # generator MLM + 50 x discriminator BCE goes down
  assert 0.05 <= result["eval"]["replaced_fraction"] <= 0.2
  assert cli.main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
  hf = T.ElectraForPreTraining.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
  from bertjax.model_dir import load_model_dir

  ours, _ = load_model_dir(run)
  ids = np.random.default_rng(0).integers(5, 1000, (2, 16))
  ref = run_hf(hf, ids).logits.numpy()
  assert max_diff(ours(jnp.asarray(ids)).rtd_logits, ref) <= 1e-5
