"""A run folder's rules, written once for every trainer.

- **One live run per folder**: ``run.lock`` (host, pid, start time); a lock whose process is
  gone (same host) is stale and taken over with a warning; the lock is released on every exit.
  In a multi-process job process 0 holds it and tells the others.
- **One config**: ``config.yaml`` is written once per start, atomically. Resuming with changes
  that keep the run's meaning (``resumable`` keys: more steps, cadences, retention, logging,
  the mesh) is accepted and recorded in ``config-history.jsonl``; any other change is refused
  with the list of keys unless the caller allows it explicitly (recorded too).
- **One history**: ``metrics.jsonl`` rows past the step a run restarts from are dropped.
- **One outcome**: ``status.json`` says what became of the run -- ``running``, ``preempted``
  (SIGTERM: saved, resumable; the CLI exits with ``errors.EXIT_PREEMPTED``), ``completed`` or
  ``failed`` (with the error) -- with the step, the time and the host. Anything that manages
  runs (``launch/tpu.py babysit``, a JobSet, Slurm) reads it rather than guess from an exit code.

A run folder may be on object storage (``run_dir=gs://...``, ``bertjax.storage``). There the lock
is an object written and read back (object storage has no exclusive create here): of two runs
starting at the same moment, the one whose lock object survives continues, the other stops.

Nothing here is called before the caller has validated everything it can (config, mesh, batch
split, data, starting parameters): a refused command leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import yaml

from bertjax import layout, storage
from bertjax.errors import RunDirError

STATES = ("running", "preempted", "completed", "failed")


def write_status(run_dir: Path, state: str, *, step: int | None = None,
                 error: str | None = None, **extra) -> None:
  """``run_dir/status.json``, whole or not at all (process 0 writes it)."""
  if state not in STATES:
    raise ValueError(f"unknown run state {state!r}")
  if jax.process_index() != 0:
    return
  status = {"state": state, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()),
            "host": socket.gethostname(), "pid": os.getpid(), **extra}
  if error is not None:
    status["error"] = error
  write_text_atomic(run_dir / layout.STATUS, json.dumps(status) + "\n")


def read_status(run_dir: Path) -> dict | None:
  path = storage.as_path(run_dir) / layout.STATUS
  return json.loads(path.read_text()) if path.exists() else None


def check_run_dir_path(run_dir: Path) -> None:
  """``run_dir`` must be (or become) a folder: no file in its place or above it."""
  if storage.is_url(run_dir):  # object storage: "folders" are name prefixes
    if run_dir.exists() and not run_dir.is_dir():
      raise RunDirError(f"run_dir={run_dir} is a file, not a folder")
    return
  for p in (run_dir, *run_dir.parents):
    if p.exists():
      if not p.is_dir():
        raise RunDirError(f"run_dir={run_dir}: {p} is a file, not a folder")
      return


def write_text_atomic(path: Path, text: str) -> None:
  """Write ``path`` whole or not at all (``storage.write_text``)."""
  storage.write_text(path, text)


# -- the lock --------------------------------------------------------------------------------


def _holder(path: Path) -> dict | None:
  try:
    holder = json.loads(path.read_text())
    return holder if isinstance(holder, dict) else None
  except (OSError, ValueError):
    return None


STALE_SECONDS = 300.0  # a lock not refreshed for this long: its holder is gone
HEARTBEAT_SECONDS = 60.0


def _alive(holder: dict) -> bool:
  """Whether the lock's process still runs. Same host: ask the OS. Another host (a preempted
  TPU VM never comes back): alive while it refreshes its ``heartbeat``, or when it has none."""
  if holder.get("host") != socket.gethostname():
    beat = holder.get("heartbeat")
    return not isinstance(beat, (int, float)) or time.time() - beat < STALE_SECONDS
  try:
    os.kill(int(holder.get("pid", -1)), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError, OverflowError):
    return True
  return True


def _in_use(run_dir: Path, path: Path, holder: dict) -> RunDirError:
  since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
  return RunDirError(
      f"{run_dir} is in use by another run (host {holder.get('host')}, pid "
      f"{holder.get('pid')}, since {since}); wait for it to end, choose another run_dir, "
      f"or delete {path} if that run is gone")


def _create_exclusive(path: Path, me: dict) -> bool:
  """Write the lock only if there is none: ``O_EXCL`` locally; on object storage write, wait,
  read back -- the last writer's token wins, and every other writer sees it is not theirs."""
  if storage.is_url(path):
    if path.exists():
      return False
    path.write_text(json.dumps(me))
    time.sleep(0.5)  # a concurrent writer's object replaces ours within this
    return (_holder(path) or {}).get("token") == me["token"]
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(me, f)
  return True


def _acquire(run_dir: Path) -> Path:
  path = run_dir / layout.LOCK
  now = time.time()
  me = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
        "token": uuid.uuid4().hex}
  for _ in range(3):
    if _create_exclusive(path, me):
      return path
    holder = _holder(path)
    if holder is not None and holder.get("token") != me["token"] and _alive(holder):
      raise _in_use(run_dir, path, holder)
    if holder is not None and holder.get("token") == me["token"]:
      return path
    warnings.warn(f"{path}: taking over a stale lock ({holder or 'unreadable'})", stacklevel=3)
    path.unlink(missing_ok=True)
  raise RunDirError(f"{run_dir}: could not take {path}")


@contextlib.contextmanager
def _heartbeat(path: Path) -> Iterator[None]:
  """Refresh the lock's ``heartbeat`` every ``HEARTBEAT_SECONDS`` while the run holds it, so a
  run on another host can tell a live holder from one that vanished with its VM."""
  done = threading.Event()

  def beat():
    while not done.wait(HEARTBEAT_SECONDS):
      holder = _holder(path)
      if not holder or holder.get("pid") != os.getpid():
        return
      try:
        storage.write_text(path, json.dumps({**holder, "heartbeat": time.time()}))
      except OSError:
        pass  # a missed beat; the next one may get through

  thread = threading.Thread(target=beat, name="bertjax-run-lock", daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join(timeout=30)  # a beat in flight lands before the lock is released, not after


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
  storage.append_text(run_dir / layout.HISTORY, json.dumps(entry) + "\n")


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
      saved = run_dir / layout.CONFIG
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
    with _heartbeat(lock) if lock is not None else contextlib.nullcontext():
      write_status(run_dir, "running")
      try:
        yield run_dir
      except BaseException as e:  # the caller writes preempted / completed itself
        write_status(run_dir, "failed",
                     error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:500]}")
        raise
  finally:
    if lock is not None:
      _release(lock)


# -- the metric history ----------------------------------------------------------------------


def drop_metrics_after(run_dir: Path, step: int) -> None:
  """Keep the ``metrics.jsonl`` rows up to ``step`` (where a run restarts); rows of an
  interrupted attempt past it would otherwise appear twice."""
  path = run_dir / layout.METRICS
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
