"""A fine-tuning config's sub-runs, one per seed (``train.seeds``), in one claimed run folder,
and the summary of their medians (``summary.json``) -- shared by every task type."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

import jax

from bertjax import layout
from bertjax.config import FinetuneConfig, to_dict
from bertjax.train.run_dir import claim_run_dir, write_status, write_text_atomic

# Config keys a resumed fine-tuning run may change without changing what it trains.
RESUMABLE = ("name", "run_dir", "train.epochs", "train.eval_every", "train.log_every",
             "train.eval_batch_size", "train.early_stopping_patience", "train.on_nonfinite",
             "train.max_consecutive_skips", "checkpoint", "mesh")


def run_seeds(cfg: FinetuneConfig, task, run_dir: Path,
              train_one: Callable[[int, Path], dict], *,
              splits: tuple[str, ...] = ("dev", "test"), extra: dict | None = None,
              allow_config_change: bool = False) -> dict:
  """``train_one(seed, seed_dir) -> result`` per seed; a preempted seed stops the run (status
  ``preempted``, exit 75 from the CLI). The summary holds every seed's result and, per split,
  the median of each metric all seeds report."""
  runs = {}
  with claim_run_dir(run_dir, to_dict(cfg), resumable=RESUMABLE,
                     allow_config_change=allow_config_change):
    for seed in cfg.train.seeds:
      runs[seed] = train_one(seed, layout.seed_dir(run_dir, seed, len(cfg.train.seeds)))
      if runs[seed].get("preempted"):
        write_status(run_dir, "preempted", step=runs[seed]["step"], seed=seed)
        return {"preempted": True, "seed": seed, **runs[seed]}
    summary = {"task": cfg.task, "init_from": cfg.init_from, "metric": task.metric(cfg),
               **(extra or {}), "seeds": {str(s): r for s, r in runs.items()}}
    for split in splits:
      keys = set.intersection(*(set(r.get(split) or {}) for r in runs.values()))
      if keys:
        summary[f"median_{split}"] = {k: statistics.median(r[split][k] for r in runs.values())
                                      for k in sorted(keys)}
    if jax.process_index() == 0:
      write_text_atomic(run_dir / layout.SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_status(run_dir, "completed", step=runs[cfg.train.seeds[-1]]["steps"])
  return summary


class BestDev:
  """A seed's dev evaluations: the best value of the task type's metric so far, the model folder
  saved when it improves, ``best.json`` (read back on resume, with any ``extra`` kept in it) and
  early-stopping patience."""

  def __init__(self, cfg: FinetuneConfig, task, run_dir: Path, run,
               save_model: Callable[[], None]):
    self.cfg, self.run, self.save_model = cfg, run, save_model
    self.metric = task.metric(cfg)
    self.lower_is_better = self.metric in task.minimize
    self.file = run_dir / layout.BEST
    self.best = json.loads(self.file.read_text()) if self.file.exists() else {}

  def better(self, value: float) -> bool:
    old = self.best.get("value")
    return old is None or (value < old if self.lower_is_better else value > old)

  def record(self, step: int, metrics: dict, **extra) -> bool:
    """Log ``metrics`` of ``step``; True = stop (patience exhausted)."""
    self.run.writer.write(step, metrics, prefix="eval")
    value = metrics[self.metric]
    if self.better(value):
      self.best = {"step": step, "value": value, "metrics": metrics, "bad_evals": 0}
      self.save_model()
    else:
      self.best["bad_evals"] = self.best.get("bad_evals", 0) + 1
    self.best.update(extra)
    if jax.process_index() == 0:
      write_text_atomic(self.file, json.dumps(self.best, indent=2) + "\n")
    self.run.log(f"step {step}: dev {self.metric} {value:.4f} (best {self.best['value']:.4f} "
                 f"at step {self.best['step']})")
    patience = self.cfg.train.early_stopping_patience
    return patience is not None and self.best["bad_evals"] >= patience
