"""Metric writers: tensorboardX event files + metrics.jsonl (process 0 only), and a rich
progress bar with loss, tokens/s and ETA. (clu's writers need TensorFlow.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax


class MetricWriter:
  """``purge_step``: a run restarting there hides TensorBoard events from that step on (the
  caller trims ``metrics.jsonl`` the same way)."""

  def __init__(self, run_dir: Path, enabled: bool | None = None, purge_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      run_dir.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(run_dir / "events"), purge_step=purge_step)
      self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    for k, v in clean.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, step)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **clean, "time": time.time()}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """A rich progress bar on process 0 (plain, no-op elsewhere or when not a terminal)."""

  def __init__(self, total: int, start: int, enabled: bool | None = None,
               label: str = "pretrain"):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = None
    if self.enabled:
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                 TextColumn, TimeElapsedColumn, TimeRemainingColumn)

      from rich.console import Console

      self._bar = RichProgress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                               TextColumn("ETA"), TimeRemainingColumn(), transient=False,
                               console=Console(stderr=True))  # stdout stays machine-readable
      self._task = self._bar.add_task("train", total=total, completed=start, status="")
      self._bar.start()

  def update(self, step: int, status: str = "") -> None:
    if self._bar is not None:
      self._bar.update(self._task, completed=step, status=status)

  def log(self, message: str) -> None:
    if self._bar is not None:
      self._bar.console.log(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.stop()
