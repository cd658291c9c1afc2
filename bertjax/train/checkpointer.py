"""A run's checkpoints (Orbax CheckpointManager): train state + grain iterator state, async,
keep-N / keep-every-K.

Orbax writes each step into a temporary folder and renames it when complete (on object
storage, where there is no rename: writes it in place and marks it ``commit_success.txt``), so a
save that is interrupted never replaces the previous good checkpoint (``latest_step`` only sees
finished ones). Restoring takes an abstract target carrying the *current* mesh's shardings, so a run can
resume on a different mesh shape. Grain iterator state is per process: it is restored only when
the process count matches (otherwise the model/optimizer state alone is restored). A finished
checkpoint that can't be read (a truncated file, emptied metadata) is passed over for the
newest readable one, and moved aside once an older one has restored.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from bertjax import storage
from bertjax.config import CheckpointConfig
from bertjax.errors import DiskFullError, RunDirError

UNREADABLE = "unreadable-checkpoints"  # sibling of the checkpoints folder


def free_bytes(path: Path) -> int:
  return shutil.disk_usage(path).free


class Checkpointer:

  def __init__(self, directory: Path, cfg: CheckpointConfig):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, keep_period=cfg.keep_every,
        enable_async_checkpointing=cfg.async_save, create=True)
    self.directory = storage.absolute(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    self.every = cfg.every

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    if not self.manager.should_save(step) and not force:
      return False
    self.manager.wait_until_finished()  # the previous save's bytes are on disk: free is free
    self._check_space(step, state)
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({"step": step, "process_count": jax.process_count()})}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _check_space(self, step: int, state) -> None:
    """Refuse a save that cannot fit on a local disk before writing a byte (a disk that fills
    up inside Orbax's async writer fails in a background thread, after this step returned).
    The need: the bytes this process writes (one replica of each shard it holds) + 5%."""
    if storage.is_url(self.directory):
      return
    need = 1.05 * sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
                      if isinstance(leaf, jax.Array)
                      for shard in leaf.addressable_shards if shard.replica_id == 0)
    where = Path(self.directory)
    while not where.exists():
      where = where.parent
    free = free_bytes(where)
    if free < need:
      latest = self.latest_step()
      raise DiskFullError(
          f"{self.directory}: no space left for checkpoint step {step} (it needs about "
          f"{need / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB are free); "
          + ("no checkpoint was written" if latest is None else
             f"the last checkpoint, step {latest}, is intact")
          + " -- free some space and run the same command again")

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def restore(self, step: int, abstract_state, data_iterator=None):
    """-> (state, data iterator restored?)."""
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    restore_data = data_iterator is not None and meta.get("process_count") == jax.process_count()
    if restore_data:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restore_data

  def restore_latest(self, abstract_state, data_iterator=None):
    """-> (step, state) of the newest readable checkpoint; (None, None) when there is none."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        state, _ = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # any reader error: the bytes on disk, not this process, are bad
        failures.append((step, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"))
        continue
      for bad, reason in failures:
        self._set_aside(bad, reason)
      return step, state
    if failures:
      step, reason = failures[0]
      raise RunDirError(f"{self.directory}: no checkpoint can be restored (step {step}: {reason}); "
                        "if the run's config changed, resume with the old one or start a new "
                        "run_dir")
    return None, None

  def _set_aside(self, step: int, reason: str) -> None:
    """Move an unreadable step out of the manager's way (a later save may reuse its number)."""
    from jax.experimental import multihost_utils

    dest = self.directory.parent / UNREADABLE / str(step)
    if jax.process_index() == 0:
      dest.parent.mkdir(parents=True, exist_ok=True)
      storage.move_tree(self.directory / str(step), dest)
    multihost_utils.sync_global_devices(f"bertjax:set_aside:{step}")
    self.manager.reload()
    warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); "
                  f"restored an older one and moved it to {dest}", stacklevel=3)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
