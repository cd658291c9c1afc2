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
from pretrain_helpers import patterned_corpus
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
  key = jax.random.PRNGKey(0)
  _, disc_input, replaced = map(np.asarray, obj.replace_tokens(model, batch, key))
  masked = np.zeros(ids.shape, bool)
  for r in range(4):
    masked[r, positions[r][weights[r] > 0]] = True
  assert masked.sum() == weights.sum()
  # outside the masked positions (a zero-weight one included) the input is the batch's own
  assert np.array_equal(disc_input[~masked], ids[~masked])
  original = ids.copy()
  np.put_along_axis(original, positions, batch["masked_ids"], 1)
  want = (disc_input != original) & masked
  assert np.array_equal(replaced, want.astype(np.float32))
  # a sample equal to the original is "original": make half the masked originals the samples
  same = masked & (np.arange(ids.shape[1]) % 2 == 0)
  batch2 = dict(batch, masked_ids=np.take_along_axis(np.where(same, disc_input, original),
                                                     positions, 1))
  _, disc2, replaced2 = map(np.asarray, obj.replace_tokens(model, batch2, key))
  assert np.array_equal(disc2, disc_input)  # the samples depend on the input, not the labels
  assert not replaced2[same].any() and replaced2[~masked].sum() == 0
  assert np.array_equal(replaced2[masked & ~same], replaced[masked & ~same])
  assert replaced.sum() > replaced2.sum() > 0  # both cases occur
  loss, sums = obj(model, batch, key, obj.totals(batch))
  assert np.isfinite(float(loss))
  assert float(sums["replaced"]) == replaced.sum() and float(sums["rtd_count"]) == ids.size
  m = obj.finalize(jax.device_get(sums))
  assert m["replaced_fraction"] == replaced.sum() / ids.size and 0.0 <= m["rtd_auc"] <= 1.0


def test_electra_learns_and_exports_its_discriminator(tmp_path):
  """The discriminator learns to tell replaced tokens apart (accuracy above the all-original
  guess, AUC; the generator's own bar is in test_recipes) and exports as ElectraForPreTraining
  with equal logits."""
  corpus = patterned_corpus(tmp_path / "pattern.txt")
  run = tmp_path / "run"
  from bertjax.config import experiment_config

  cfg = experiment_config("electra-tiny", [
      f"run_dir={run}", f"data.source={corpus}", "model.hidden_size=64", "model.num_layers=2",
      "model.intermediate_size=128", "model.embedding_size=32", "train.steps=60",
      "train.batch_size=16", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=4",
      "optim.learning_rate=3e-3", "optim.warmup_steps=3", "data.max_seq_length=64",
      "train.peak_flops_per_device=1e9"])
  result = pretrain(cfg, quiet=True)
  ev = result["eval"]
  assert 0.05 <= ev["replaced_fraction"] <= 0.2
  # better than calling every token original, and it ranks replaced tokens above originals
  assert ev["rtd_accuracy"] >= 1 - ev["replaced_fraction"] + 0.05, ev
  assert ev["rtd_auc"] >= 0.75, ev
  assert cli.main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
  hf = T.ElectraForPreTraining.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
  from bertjax.model_dir import load_model_dir

  ours, _ = load_model_dir(run)
  ids = np.random.default_rng(0).integers(5, 1000, (2, 16))
  ref = run_hf(hf, ids).logits.numpy()
  assert max_diff(ours(jnp.asarray(ids)).rtd_logits, ref) <= 1e-5
