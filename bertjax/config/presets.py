"""Preset lookup: ``configs/{model,experiments,tasks}/NAME.yaml`` (shipped in the wheel as
``bertjax/presets``), or a YAML path."""

from __future__ import annotations

import difflib
from pathlib import Path

from bertjax.errors import ConfigError


def presets_dir() -> Path:
  """The ``configs/`` folder: next to the package in a checkout, or installed as bertjax/presets."""
  here = Path(__file__).resolve().parent.parent
  for candidate in (here.parent / "configs", here / "presets"):
    if candidate.is_dir():
      return candidate
  raise ConfigError("cannot find the configs/ presets folder next to the bertjax package")


def find_preset(name: str, kind: str) -> Path:
  """Resolve a preset name (``bert-base``) or a YAML path to a file."""
  p = Path(name)
  if p.suffix in (".yaml", ".yml"):
    if not p.exists():
      raise ConfigError(f"config file {p} does not exist")
    return p
  candidate = presets_dir() / kind / f"{name}.yaml"
  if candidate.exists():
    return candidate
  known = sorted(x.stem for x in (presets_dir() / kind).glob("*.yaml"))
  close = difflib.get_close_matches(name, known, n=1)
  hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
  raise ConfigError(f"unknown {kind} preset {name!r}{hint}")
