"""The run scaffold every trainer uses (pretraining, each fine-tuning seed).

``claim_run_dir``: a run folder holds one run -- resuming with another setup is refused before
anything is written -- and its resolved ``config.yaml``. ``open_run``: the mesh (active for the
whole run), SIGTERM -> ``run.stop``, and the services a run writes through, opened when first
used so that a run failing while it builds its model leaves nothing behind: the Orbax
checkpointer, the metric writer, the progress bar. All are closed on every exit.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

import jax
import yaml

from bertjax import sharding
from bertjax.config import CheckpointConfig, ConfigError, MeshConfig
from bertjax.train.checkpointer import Checkpointer
from bertjax.train.metrics import MetricWriter, Progress


def claim_run_dir(run_dir: Path, config: dict, *, same: Sequence[str], what: str) -> None:
  """Make ``run_dir`` this run's folder. If it already holds a run, the config sections named
  in ``same`` must be equal (compared field by field); ``config.yaml`` is (re)written."""
  saved = run_dir / "config.yaml"
  if saved.exists():
    old = yaml.safe_load(saved.read_text()) or {}
    diff = _differing(old, config, same)
    if diff:
      raise ConfigError(f"{run_dir} holds a run with a different {what} "
                        f"({', '.join(diff[:4])}); choose another run_dir")
  run_dir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    saved.write_text(yaml.safe_dump(config, sort_keys=False))


def _differing(old: dict, new: dict, sections: Sequence[str]) -> list[str]:
  """Dotted keys whose values differ: ``model.num_layers``, or a whole non-mapping section."""
  out = []
  for section in sections:
    a, b = old.get(section), new.get(section)
    if isinstance(a, dict) and isinstance(b, dict):
      out += sorted(f"{section}.{k}" for k in b if a.get(k) != b[k])
    elif a != b:
      out.append(section)
  return out


class Run:
  """A run's folder and the services that write into it (see the module docstring)."""

  def __init__(self, directory: Path, mesh: jax.sharding.Mesh, checkpoint: CheckpointConfig, *,
               label: str, quiet: bool, stop: threading.Event):
    self.dir, self.mesh, self.stop = directory, mesh, stop
    self._checkpoint, self._label, self._quiet = checkpoint, label, quiet
    self.progress: Progress | None = None

  @functools.cached_property
  def checkpointer(self) -> Checkpointer:
    return Checkpointer(self.dir / "checkpoints", self._checkpoint)

  @functools.cached_property
  def writer(self) -> MetricWriter:
    return MetricWriter(self.dir)

  def show_progress(self, total: int, start: int) -> Progress:
    """The progress bar (process 0, unless quiet), from ``start`` of ``total`` steps."""
    if self.progress is None:
      self.progress = Progress(total, start, enabled=jax.process_index() == 0 and not self._quiet,
                               label=self._label)
    return self.progress

  def log(self, message: str) -> None:
    if self.progress is not None:
      self.progress.log(message)

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
    for name in ("writer", "checkpointer"):  # only what was opened
      if name in self.__dict__:
        self.__dict__[name].close()


@contextlib.contextmanager
def open_run(run_dir: Path, mesh: MeshConfig, checkpoint: CheckpointConfig, *, devices=None,
             label: str = "pretrain", quiet: bool = False,
             stop_event: threading.Event | None = None) -> Iterator[Run]:
  """A ``Run`` on a mesh of ``devices`` (default: all) shaped by ``mesh``, active inside.
  SIGTERM (a preempted VM) sets ``run.stop``: the step loop saves and returns."""
  run_dir.mkdir(parents=True, exist_ok=True)
  run = Run(run_dir, sharding.make_mesh(mesh, devices), checkpoint, label=label, quiet=quiet,
            stop=stop_event or threading.Event())
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
  try:
    with sharding.use_mesh(run.mesh, mesh.rules):
      yield run
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    run.close()


def check_process_split(*batch_sizes: tuple[str, int]) -> None:
  """Each global batch must split evenly over the processes (each reads its own rows)."""
  processes = jax.process_count()
  for name, size in batch_sizes:
    if size % processes:
      raise ConfigError(f"{name}={size} is not divisible by the {processes} processes")
