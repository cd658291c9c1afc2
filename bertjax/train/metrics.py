"""Metric writers: tensorboardX event files + metrics.jsonl (process 0 only), and progress: a
rich bar on a terminal, plain log lines elsewhere. (clu's writers need TensorFlow.)"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax

from bertjax import layout, storage


class MetricWriter:
  """``purge_step``: a run restarting there hides TensorBoard events from that step on (the
  caller trims ``metrics.jsonl`` the same way). On object storage, which cannot append, the
  event file is written locally and ``metrics.jsonl`` kept in memory; both are uploaded whole
  at most every ``sync_seconds``, with each checkpoint (``checkpointed``) and on close."""

  def __init__(self, run_dir: Path, enabled: bool | None = None, purge_step: int | None = None,
               sync_seconds: float = 30.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._remote = storage.is_url(run_dir)
    self._path = run_dir / layout.METRICS
    self._sync_seconds, self._synced = sync_seconds, time.monotonic()
    self._sync_at: int | None = None
    self._events = run_dir / layout.EVENTS
    if self.enabled:
      from tensorboardX import SummaryWriter

      run_dir.mkdir(parents=True, exist_ok=True)
      if self._remote:  # events go to a local file, uploaded whole at each sync
        self._local_events = Path(tempfile.mkdtemp(prefix="bertjax-events-"))
        self._tb = SummaryWriter(str(self._local_events), purge_step=purge_step)
        self._lines = self._path.read_text(encoding="utf-8") if self._path.exists() else ""
      else:
        self._tb = SummaryWriter(str(self._events), purge_step=purge_step)
        self._jsonl = open(self._path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    for k, v in clean.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, step)
    line = json.dumps({"step": step, "split": prefix, **clean, "time": time.time()}) + "\n"
    if self._remote:
      self._lines += line
      due = self._sync_at is not None and step >= self._sync_at
      if due or time.monotonic() - self._synced >= self._sync_seconds:
        self.flush()
    else:
      self._jsonl.write(line)
      self._jsonl.flush()

  def checkpointed(self, step: int) -> None:
    """A checkpoint of ``step`` was saved: upload once its row is written (the row of a step
    comes a step later, when its metrics are read back), so a run killed after a checkpoint
    finds its history up to that step in the run folder."""
    if self._remote:
      self._sync_at = step

  def flush(self) -> None:
    """Everything written so far is in the run folder."""
    if not self.enabled:
      return
    self._tb.flush()
    if self._remote:
      self._upload()

  def _upload(self) -> None:
    for f in sorted(self._local_events.iterdir()):
      storage.copy_file(f, self._events / f.name)
    storage.write_text(self._path, self._lines)
    self._synced, self._sync_at = time.monotonic(), None

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self._remote:
        self._upload()
        shutil.rmtree(self._local_events, ignore_errors=True)
      else:
        self._jsonl.close()


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Progress on process 0 (a no-op elsewhere), on stderr so stdout stays machine-readable.

  On a terminal: a rich progress bar. Off a terminal (a TPU VM's log, ``tee``, a file): one
  plain, flushed line per logged step (``update`` with a status: step, loss, tokens/s, MFU,
  elapsed, ETA) and per ``log`` message (checkpoints, evaluations) -- nothing in between."""

  def __init__(self, total: int, start: int, enabled: bool | None = None,
               label: str = "pretrain", terminal: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total, self.start, self.label = total, start, label
    self._bar = None
    self._began = time.perf_counter()
    self.plain = self.enabled and not (sys.stderr.isatty() if terminal is None else terminal)
    if self.enabled and not self.plain:
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
    elif self.plain and status:
      elapsed = time.perf_counter() - self._began
      done = step - self.start
      eta = (self.total - step) * elapsed / done if done > 0 else float("nan")
      self._print(f"step {step}/{self.total} {status} elapsed {_clock(elapsed)} ETA "
                  f"{_clock(eta) if eta == eta else '-'}")

  def log(self, message: str) -> None:
    if self._bar is not None:
      self._bar.console.log(message)
    elif self.plain:
      self._print(message)

  def _print(self, line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.label}: {line}", file=sys.stderr,
          flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.stop()
