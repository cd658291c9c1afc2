"""The run scaffold every trainer uses (pretraining, each fine-tuning seed).

``plan_mesh`` builds the mesh and checks the batch split before anything is written; the run
folder's rules (lock, config, history) are ``run_dir.py``'s ``claim_run_dir``. ``open_run``:
the mesh (active for the whole run), SIGTERM -> ``run.stop`` (on several processes: the step all
of them agree on, ``preemption.py``), and the services a run writes
through, opened when first used so that a run failing while it builds its model leaves nothing
behind: the Orbax checkpointer, the metric writer, the progress bar. All are closed on every
exit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
from pathlib import Path
from typing import Iterator

import jax

from bertjax import layout, sharding
from bertjax.config import CheckpointConfig, ConfigError, MeshConfig
from bertjax.train import preemption
from bertjax.train.checkpointer import Checkpointer
from bertjax.train.metrics import MetricWriter, Progress
from bertjax.train.run_dir import drop_metrics_after


def plan_mesh(mesh: MeshConfig, devices=None, **batch_sizes: int) -> jax.sharding.Mesh:
  """The mesh for ``mesh.*`` over ``devices`` (default: all), checked against each global batch
  size (``train_batch_size=256``): it must split over the processes (each reads its own rows)
  and over the mesh's data-parallel axes."""
  try:
    m = sharding.make_mesh(mesh, devices)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from None
  batch_axes = sharding.logical_to_spec(("batch",), None, m, mesh.rules)[0] or ()
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else batch_axes
  parallel = math.prod(m.shape[a] for a in batch_axes)
  processes = jax.process_count()
  for name, size in batch_sizes.items():
    field = "train." + name.replace("train_", "")
    if size % processes:
      raise ConfigError(f"{field}={size} is not divisible by the {processes} processes")
    if size % parallel:
      raise ConfigError(f"{field}={size} is not divisible by the {parallel} data-parallel "
                        f"devices of the mesh ({' x '.join(batch_axes)}); change it or mesh.*")
  return m


class Run:
  """A run's folder and the services that write into it (see the module docstring)."""

  def __init__(self, directory: Path, mesh: jax.sharding.Mesh, checkpoint: CheckpointConfig, *,
               label: str, quiet: bool, stop: threading.Event):
    self.dir, self.mesh, self.stop = directory, mesh, stop
    self._checkpoint, self._label, self._quiet = checkpoint, label, quiet
    self._start = 0  # the step the run continues from (restore)
    self.progress: Progress | None = None
    self._agree = preemption.arm()  # several processes: stop where all of them agree

  def should_stop(self) -> bool:
    """Called once per training step on every process: whether to save and stop now (SIGTERM,
    or ``stop`` set by a caller). Several processes get the same answer at the same step."""
    if self._agree and preemption.agreed():
      self.stop.set()
    return self.stop.is_set()

  @functools.cached_property
  def checkpointer(self) -> Checkpointer:
    return Checkpointer(self.dir / layout.CHECKPOINTS, self._checkpoint)

  @functools.cached_property
  def writer(self) -> MetricWriter:
    return MetricWriter(self.dir, purge_step=self._start + 1 if self._start else None)

  def restore(self, engine, data_iterator=None) -> int | None:
    """The newest readable checkpoint into ``engine`` (and the data iterator); -> its step, or
    None for a fresh start. Metric rows past the step the run continues from are dropped, so
    ``metrics.jsonl`` and TensorBoard read as one run."""
    step, state = self.checkpointer.restore_latest(engine.abstract_state(), data_iterator)
    if state is not None:
      engine.adopt(state)
    self._start = step or 0
    drop_metrics_after(self.dir, self._start)
    return step

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
def open_run(run_dir: Path, mesh: jax.sharding.Mesh, mesh_cfg: MeshConfig,
             checkpoint: CheckpointConfig, *, label: str = "pretrain", quiet: bool = False,
             stop_event: threading.Event | None = None) -> Iterator[Run]:
  """A ``Run`` in ``run_dir`` on ``mesh`` (from ``plan_mesh``), active inside with the rules of
  ``mesh_cfg``. SIGTERM (a preempted VM) sets ``run.stop``: the step loop saves and returns. On
  several processes JAX's preemption notifier catches SIGTERM instead and ``run.should_stop``
  agrees on the step (no Python handler: it would replace the notifier)."""
  run_dir.mkdir(parents=True, exist_ok=True)
  run = Run(run_dir, mesh, checkpoint, label=label, quiet=quiet,
            stop=stop_event or threading.Event())
  previous = None
  if threading.current_thread() is threading.main_thread() and not run._agree:
    previous = signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
  try:
    with sharding.use_mesh(run.mesh, mesh_cfg.rules):
      yield run
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    run.close()
