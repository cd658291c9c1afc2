"""The names inside bertjax's folders, in one place.

A run folder (``pretrain``; ``finetune``, one per seed under ``seed-N/`` when there are several):

  config.yaml           the resolved config the run trains (``train/run_dir.py``)
  config-history.jsonl  config changes a resume accepted
  run.lock              the live run's lock (host, pid, heartbeat)
  status.json           running / preempted / completed / failed, the step, the time
  metrics.jsonl         one JSON object per logged step (train and eval rows)
  events/               TensorBoard event files
  checkpoints/          Orbax run checkpoints (model, optimizer, step, RNG, data iterator)
  model/                the trained model, a model folder
  best.json             fine-tuning: the best dev evaluation (its step and scores)
  result.json           fine-tuning: one seed's result (steps, dev and test scores)
  summary.json          fine-tuning: scores per seed and their medians

A model folder: config.yaml, params/ (Orbax), tokenizer/. A folder published on object storage
ends with ``storage.COMMIT``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
HISTORY = "config-history.jsonl"
LOCK = "run.lock"
STATUS = "status.json"
METRICS = "metrics.jsonl"
EVENTS = "events"
CHECKPOINTS = "checkpoints"
MODEL = "model"
BEST = "best.json"
RESULT = "result.json"
SUMMARY = "summary.json"
PARAMS = "params"
TOKENIZER = "tokenizer"
SEEDS = "seed-*"  # the seed folders of a multi-seed fine-tuning run (seed_dir)


def seed_dir(run_dir: Path, seed: int, seeds: int) -> Path:
  """A fine-tuning seed's run folder: the run folder itself when it trains one seed."""
  return run_dir if seeds == 1 else run_dir / f"seed-{seed}"
