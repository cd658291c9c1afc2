"""One path layer for every file bertjax reads or writes: local folders and object storage
(``gs://``, or any URL ``etils.epath`` opens; gs:// goes through gcsfs, ``pip install
'bertjax[gcs]'``).

``as_path`` turns what a user typed into a path object: a ``pathlib.Path`` for a local path, an
``epath.Path`` for a URL (``pathlib.Path("gs://b/x")`` would silently become the local folder
``gs:/b/x``). Both have the same methods (``/``, ``exists``, ``open``, ``read_text``, ``glob``,
``mkdir``, ...), so callers stay the same; the few operations object storage does not have are
here, each with a form that keeps the same promise there:

- **never half-written files** (``write_text`` / ``write_bytes``): locally a sibling temporary
  file renamed into place; on object storage one upload, which is atomic by itself (an object
  appears whole or not at all).
- **never half-written folders** (``publish_dir``): locally a temporary sibling renamed into
  place; object storage has no atomic rename (it is copy + delete), so the folder is written in
  place and a commit marker (``COMMIT``) is written last; readers (``check_published``) refuse a
  remote folder without it.
- **appending** (``append_text``): object storage cannot append; the object is rewritten.
- **libraries that only read local files** (tokenizers, SentencePiece, safetensors):
  ``local_copy`` downloads a remote file or folder once per process into a cache.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Union

from etils import epath

AnyPath = Union[Path, epath.Path]
COMMIT = ".bertjax-complete"  # the last object of a folder published on object storage


def _no_stale_listings() -> None:
  """gcsfs caches folder listings per process; other processes and hosts (a multi-host job's
  workers, the run before a preemption) write the same folders, so list afresh every time."""
  try:
    import fsspec.config
  except ImportError:  # no gcsfs either: nothing to configure
    return
  for protocol in ("gcs", "gs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_no_stale_listings()


def is_url(path) -> bool:
  """``gs://...`` (any ``scheme://``), as a string or a path object."""
  return "://" in os.fspath(path) if isinstance(path, (str, os.PathLike)) else False


def as_path(path) -> AnyPath:
  """A path object for ``path``: ``epath.Path`` for a URL, ``pathlib.Path`` otherwise."""
  if isinstance(path, epath.Path) and is_url(path):
    return path
  if is_url(path):
    return epath.Path(os.fspath(path))
  return Path(os.fspath(path)).expanduser()


def absolute(path) -> AnyPath:
  """``as_path``, absolute when local (a URL already is)."""
  p = as_path(path)
  return p if is_url(p) else p.absolute()


def write_bytes(path: AnyPath, data: bytes) -> None:
  """Write ``path`` whole or not at all (see the module docstring)."""
  path = as_path(path)
  if is_url(path):
    path.write_bytes(data)
    return
  # a name of its own: processes (hosts sharing a folder) may write the same file at once
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path: AnyPath, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path: AnyPath, text: str) -> None:
  """Append ``text`` to ``path`` (created if missing). On object storage: read + rewrite."""
  path = as_path(path)
  if is_url(path):
    old = path.read_bytes() if path.exists() else b""
    path.write_bytes(old + text.encode("utf-8"))
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def rmtree(path: AnyPath) -> None:
  """Remove a folder and everything in it; nothing if it is not there."""
  path = as_path(path)
  if is_url(path):
    if path.exists():
      path.rmtree(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def copy_file(src: AnyPath, dst: AnyPath) -> None:
  src, dst = as_path(src), as_path(dst)
  if is_url(src) or is_url(dst):
    dst.write_bytes(src.read_bytes())
  else:
    shutil.copy2(src, dst)


def files_under(path: AnyPath) -> list[AnyPath]:
  """Every file below the folder ``path``, sorted (object storage: its objects)."""
  path = as_path(path)
  if not is_url(path):
    return sorted(p for p in path.rglob("*") if p.is_file())
  bare, out = str(path).split("://", 1)[1].rstrip("/"), []
  for root, _, files in path.walk():  # roots come back without their scheme
    rel = str(root).rstrip("/")[len(bare):].lstrip("/")
    out += [(path / rel if rel else path) / f for f in files]
  return sorted(out, key=str)


def move_tree(src: AnyPath, dst: AnyPath) -> None:
  """Move the folder ``src`` to ``dst`` (replacing it). Object storage: copy, then delete."""
  src, dst = as_path(src), as_path(dst)
  rmtree(dst)
  if not is_url(src) and not is_url(dst):
    shutil.move(str(src), str(dst))
    return
  copy_tree(src, dst)
  rmtree(src)


def copy_tree(src: AnyPath, dst: AnyPath) -> None:
  """Copy every file below the folder ``src`` to the same place below ``dst``."""
  src, dst = as_path(src), as_path(dst)
  for f in files_under(src):
    target = dst / str(f)[len(str(src)):].lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_file(f, target)


# -- folders written whole -------------------------------------------------------------------


@contextlib.contextmanager
def publish_dir(dst: AnyPath, *, overwrite: bool = False, primary: bool = True,
                barrier=None) -> Iterator[AnyPath]:
  """Yield the folder to fill in for ``dst``; on success it becomes ``dst`` whole, on an error
  nothing of it is left (a replaced ``dst`` is gone only once the new one is complete, locally;
  on object storage, once the new one starts). ``primary``: this process publishes (the others
  of a multi-host job write their shards into the same folder); ``barrier(name)`` synchronises
  them between the steps."""
  dst = absolute(dst)
  barrier = barrier or (lambda name: None)
  if exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} already exists; choose another folder or remove it")
  remote = is_url(dst)
  work = dst if remote else dst.parent / f".{dst.name}.partial"
  if primary:
    if remote:  # unpublish first: a reader never sees the old marker beside new files
      (dst / COMMIT).unlink(missing_ok=True)
    rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
  barrier("publish:start")
  try:
    yield work
    barrier("publish:written")
    if primary:
      if remote:
        (dst / COMMIT).write_text("complete\n")
      else:
        rmtree(dst)
        work.rename(dst)
  except BaseException:
    if primary:
      rmtree(work)
    raise
  barrier("publish:done")


def exists(path: AnyPath) -> bool:
  """Whether ``path`` exists (object storage: a folder exists while any object is under it)."""
  path = as_path(path)
  return path.exists() or (is_url(path) and path.is_dir())


def is_published(path: AnyPath) -> bool:
  """A folder written by ``publish_dir`` and complete (local: it exists)."""
  path = as_path(path)
  return (path / COMMIT).exists() if is_url(path) else path.is_dir()


def check_published(path: AnyPath, what: str) -> None:
  """Refuse a remote folder whose writer did not finish (``publish_dir``'s marker)."""
  path = as_path(path)
  if is_url(path) and path.is_dir() and not (path / COMMIT).exists():
    raise FileNotFoundError(f"{path}: incomplete {what} (no {COMMIT}: its writer did not "
                            "finish); write it again")


# -- local copies for libraries that only open local files -----------------------------------

_CACHE: dict[str, Path] = {}


def local_copy(path: AnyPath) -> Path:
  """``path`` itself when local; else a local copy of the remote file or folder, downloaded
  once per process (removed at exit)."""
  path = as_path(path)
  if not is_url(path):
    return path
  key = str(path)
  if key not in _CACHE:
    root = Path(tempfile.mkdtemp(prefix="bertjax-remote-"))
    atexit.register(shutil.rmtree, root, True)
    if path.is_dir():
      copy_tree(path, root)
      _CACHE[key] = root
    else:
      _CACHE[key] = root / path.name
      copy_file(path, _CACHE[key])
  return _CACHE[key]
