"""Small pretraining runs for tests: a slice of the shipped corpus and a tiny BERT."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

from bertjax.config import experiment_config
from bertjax.data.sources import corpus_files


def small_corpus(path: Path, paragraphs: int = 400) -> Path:
  """The first paragraphs of every shipped book, documents kept apart by blank lines."""
  if not path.exists():
    chunks = []
    for f in corpus_files():
      lines = [l for l in lzma.open(f, "rt", encoding="utf-8").read().splitlines() if l.strip()]
      chunks.append("\n".join(lines[:paragraphs]))
    path.write_text("\n\n".join(chunks) + "\n")
  return path


def overrides(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
  return [f"run_dir={run_dir}", f"data.source={corpus}", "model.hidden_size=32",
          "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
          "train.steps=8", "train.batch_size=16", "train.log_every=1", "train.eval_every=1000",
          "train.eval_batches=2", "checkpoint.every=4", "optim.warmup_steps=2",
          "train.peak_flops_per_device=1e9", *extra]


def config(run_dir: Path, corpus: Path, *extra: str):
  return experiment_config(None, overrides(run_dir, corpus, *extra))


def saved_steps(run_dir: Path) -> list[int]:
  """The steps of the checkpoints in a run folder."""
  return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def train_losses(run_dir: Path) -> dict[int, float]:
  out = {}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row["split"] == "train":
      out[row["step"]] = row["loss"]
  return out


WORDS = ("one two three four five six seven eight nine ten red green blue black white house "
         "river stone bread water light night king queen horse ship sea sky tree field").split()


def patterned_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
  """Text where context decides every word: each sentence walks the cycle of ``WORDS`` from a
  random start (each word is followed by the next), so a model that learns context predicts
  masked words far better than the token-frequency (unigram) baseline, which is near 1/30."""
  import random

  if not path.exists():
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
      lines = []
      for _ in range(rng.randint(2, 5)):
        start, n = rng.randrange(len(WORDS)), rng.randint(6, 14)
        lines.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(n)) + " .")
      docs.append("\n".join(lines))
    path.write_text("\n\n".join(docs) + "\n")
  return path
