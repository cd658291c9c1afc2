"""The process's surroundings: the persistent compilation cache every CLI command uses, and the
report ``bertjax doctor`` prints (paste it into a bug report).

The cache: ``$BERTJAX_COMPILATION_CACHE`` names the folder (default
``$XDG_CACHE_HOME/bertjax/jax``, i.e. ``~/.cache/bertjax/jax``); ``off`` turns it off. A cache
set through JAX's own ``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config``) wins. Every program is
kept however fast it compiled, so a second ``embed``/``predict``/``finetune``/``pretrain`` of the
same shapes reads its programs back instead of compiling them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

OFF = ("off", "0", "none", "false", "no")
PACKAGES = ("bertjax", "jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda13-plugin",
            "flax", "optax", "orbax-checkpoint", "grain", "array-record", "tokenizers",
            "sentencepiece", "safetensors", "numpy", "gcsfs", "tensorflow-datasets",
            "transformers", "torch")


def compilation_cache_dir() -> str | None:
  """The folder the CLI keeps compiled programs in; None when turned off."""
  setting = os.environ.get("BERTJAX_COMPILATION_CACHE", "").strip()
  if setting.lower() in OFF:
    return None
  if setting:
    return os.path.abspath(os.path.expanduser(setting))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bertjax", "jax")


def use_compilation_cache() -> str | None:
  """Turn the persistent compilation cache on (unless JAX already has one, or it is off) ->
  the folder in use."""
  import jax

  if jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR / the caller's: theirs
    return jax.config.jax_compilation_cache_dir
  path = compilation_cache_dir()
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def report() -> dict:
  """Versions, devices, processes, gs:// support and the cache: what a bug report needs."""
  import jax

  devices = jax.devices()
  kinds: dict[str, int] = {}
  for d in devices:
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  gcs = version("gcsfs") is not None
  return {
      "python": f"{platform.python_version()} ({sys.executable})",
      "platform": platform.platform(),
      "packages": {p: v for p in PACKAGES if (v := version(p)) is not None},
      "backend": jax.default_backend(),
      "devices": {"count": jax.device_count(), "local": jax.local_device_count(),
                  "kinds": kinds},
      "processes": {"count": jax.process_count(), "index": jax.process_index()},
      "gs": "supported (gcsfs)" if gcs else "not installed: pip install 'bertjax[gcs]'",
      "compilation_cache": jax.config.jax_compilation_cache_dir or "off",
      "environment": {k: v for k, v in sorted(os.environ.items())
                      if k.startswith(("JAX_", "XLA_", "TPU_", "BERTJAX_", "MEGASCALE_"))},
  }
