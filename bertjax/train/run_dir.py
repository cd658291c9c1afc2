"""A run folder's rules, written once for every trainer.

- **One live run per folder**: ``run.lock`` (host, pid, start time); a lock whose process is
  gone (same host) is stale and taken over with a warning; the lock is released on every exit.
  In a multi-process job process 0 holds it and tells the others.
- **One config**: ``config.yaml`` is written once per start, atomically. Resuming with changes
  that keep the run's meaning (``resumable`` keys: more steps, cadences, retention, logging,
  the mesh) is accepted and recorded in ``config-history.jsonl``; any other change is refused
  with the list of keys unless the caller allows it explicitly (recorded too).
- **One history**: ``metrics.jsonl`` rows past the step a run restarts from are dropped.

Nothing here is called before the caller has validated everything it can (config, mesh, batch
split, data, starting parameters): a refused command leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import yaml

from bertjax.errors import RunDirError

LOCK = "run.lock"
HISTORY = "config-history.jsonl"


def check_run_dir_path(run_dir: Path) -> None:
  """``run_dir`` must be (or become) a folder: no file in its place or above it."""
  for p in (run_dir, *run_dir.parents):
    if p.exists():
      if not p.is_dir():
        raise RunDirError(f"run_dir={run_dir}: {p} is a file, not a folder")
      return


def write_text_atomic(path: Path, text: str) -> None:
  """Write ``path`` via a sibling temporary file and a rename: never half-written."""
  tmp = path.with_name(f".{path.name}.partial")
  try:
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


# -- the lock --------------------------------------------------------------------------------


def _holder(path: Path) -> dict | None:
  try:
    holder = json.loads(path.read_text())
    return holder if isinstance(holder, dict) else None
  except (OSError, ValueError):
    return None


def _alive(holder: dict) -> bool:
  """Whether the lock's process still runs; a process on another host is assumed to."""
  if holder.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(holder.get("pid", -1)), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError, OverflowError):
    return True
  return True


def _acquire(run_dir: Path) -> Path:
  path = run_dir / LOCK
  me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _holder(path)
      if holder is not None and _alive(holder):
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
        raise RunDirError(
            f"{run_dir} is in use by another run (host {holder.get('host')}, pid "
            f"{holder.get('pid')}, since {since}); wait for it to end, choose another run_dir, "
            f"or delete {path} if that run is gone") from None
      warnings.warn(f"{path}: taking over a stale lock ({holder or 'unreadable'})", stacklevel=3)
      path.unlink(missing_ok=True)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise RunDirError(f"{run_dir}: could not take {path}")


def _release(path: Path) -> None:
  holder = _holder(path)
  if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    path.unlink(missing_ok=True)


def _agree(ok: bool) -> bool:
  """Process 0's outcome, on every process of a multi-process job."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


# -- the config ------------------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Dotted key -> (old, new) for every value that differs."""
  a, b = _flatten(old), _flatten(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _resumable(key: str, resumable: Sequence[str]) -> bool:
  return any(key == r or key.startswith(r + ".") for r in resumable)


def _record(run_dir: Path, changes: dict, forced: bool) -> None:
  entry = {"time": time.time(), "accepted": "allowed explicitly" if forced else "resumable",
           "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()}}
  with open(run_dir / HISTORY, "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\n")


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, config: dict, *, resumable: Sequence[str],
                  allow_config_change: bool = False) -> Iterator[Path]:
  """Hold ``run_dir`` for this run: lock it, check a resumed run's config, write
  ``config.yaml``. Call after everything else was validated; the lock is released on exit."""
  check_run_dir_path(run_dir)
  primary = jax.process_index() == 0
  lock, error = None, None
  if primary:
    try:
      run_dir.mkdir(parents=True, exist_ok=True)
      lock = _acquire(run_dir)
      saved = run_dir / "config.yaml"
      if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        changes = config_changes(old, config)
        refused = [k for k in changes if not _resumable(k, resumable)]
        if refused and not allow_config_change:
          raise RunDirError(
              f"{run_dir} holds a run with a different config ({', '.join(refused[:6])}"
              f"{', ...' if len(refused) > 6 else ''}); choose another run_dir, or pass "
              "--allow-config-change to continue this run with the new values")
        if changes:
          _record(run_dir, changes, forced=bool(refused))
      write_text_atomic(saved, yaml.safe_dump(config, sort_keys=False))
    except BaseException as e:
      error = e
  if not _agree(error is None):
    if lock is not None:
      _release(lock)
    if error is not None:
      raise error
    raise RunDirError(f"{run_dir}: process 0 could not claim the run folder (see its error)")
  try:
    yield run_dir
  finally:
    if lock is not None:
      _release(lock)


# -- the metric history ----------------------------------------------------------------------


def drop_metrics_after(run_dir: Path, step: int) -> None:
  """Keep the ``metrics.jsonl`` rows up to ``step`` (where a run restarts); rows of an
  interrupted attempt past it would otherwise appear twice."""
  path = run_dir / "metrics.jsonl"
  if jax.process_index() != 0 or not path.exists():
    return
  kept, dropped = [], 0
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row_step = json.loads(line).get("step", 0)
    except ValueError:  # a line cut by a crash mid-write
      dropped += 1
      continue
    if row_step <= step:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
