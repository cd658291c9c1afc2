"""Loading configs: YAML presets and files -> typed frozen dataclasses, with dotted overrides.

``load(cls, source, overrides)`` is the one way in for every schema -- a model, a pretraining
experiment, a fine-tuning task: ``source`` is a preset name, a YAML path, a dict or an instance;
``overrides`` are ``a.b.c=value`` strings (YAML values). Unknown keys get a did-you-mean, bad
values name their field; every error is a one-line ``ConfigError``.

A model (top level, or an experiment's ``model:`` section) resolves as dataclass defaults <
family values (``families.py``) < ``preset: NAME`` (experiments only) < its YAML < overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bertjax.config.families import family_defaults
from bertjax.config.finetune import FinetuneConfig
from bertjax.config.presets import find_preset
from bertjax.config.model import ModelConfig
from bertjax.config.schema import ExperimentConfig
from bertjax.errors import ConfigError

T = TypeVar("T")

# The presets folder of each schema, and the preset loaded when none is named.
PRESET_KIND = {ModelConfig: "model", ExperimentConfig: "experiments", FinetuneConfig: "tasks"}
DEFAULT_PRESET = {ExperimentConfig: "bert-demo"}


def load(cls: type[T], source: str | dict | Any | None = None, overrides=()) -> T:
  """``cls`` from a preset name / YAML path / dict / instance, plus dotted overrides."""
  from_instance = dataclasses.is_dataclass(source) and not isinstance(source, type)
  if from_instance:
    data = to_dict(source)
  elif isinstance(source, dict):
    data = dict(source)
  elif source is None and cls not in DEFAULT_PRESET:
    data = {}
  else:
    data = load_yaml(find_preset(source or DEFAULT_PRESET[cls], PRESET_KIND[cls]))
  model_sections = [name for name, tp in typing.get_type_hints(cls).items() if tp is ModelConfig]
  for text in overrides:
    path, value = parse_override(text)
    if not (path[1:] == ["preset"] and path[0] in model_sections and not from_instance):
      _validate_path(cls, path)
    merge_into(data, path, value)
  if cls is ModelConfig:
    data = _model_fields(data, "model", presets=False)
  for name in model_sections:
    data[name] = _model_fields(data.get(name) or {}, name, presets=not from_instance)
  return from_dict(cls, data)


def apply_overrides(cfg: T, overrides) -> T:
  """A new ``cfg`` with dotted ``key=value`` overrides applied and re-validated."""
  return load(type(cfg), cfg, overrides)


def model_config(source: str | dict | None = None, overrides=()) -> ModelConfig:
  """A model preset (configs/model/NAME.yaml), YAML path or dict, plus overrides (no ``model.``)."""
  return load(ModelConfig, source, overrides)


def experiment_config(source: str | None = None, overrides=()) -> ExperimentConfig:
  """An experiment preset (configs/experiments/NAME.yaml, default bert-demo) or YAML path."""
  return load(ExperimentConfig, source, overrides)


def finetune_config(source: str, overrides=()) -> FinetuneConfig:
  """A task preset (configs/tasks/NAME.yaml) or YAML path."""
  return load(FinetuneConfig, source, overrides)


def _model_fields(data: Any, field: str, presets: bool) -> dict:
  """A model section with its family's values (and its ``preset``) underneath."""
  if not isinstance(data, dict):
    hint = f" (a preset is named as {field}: {{preset: {data}}})" if isinstance(data, str) else ""
    raise ConfigError(f"{field}: expected a mapping of model fields, got {data!r}{hint}")
  data = dict(data)
  if presets and "preset" in data:
    name = data.pop("preset")
    if not isinstance(name, str):
      raise ConfigError(f"{field}.preset: expected a preset name, got {name!r}")
    data = {**load_yaml(find_preset(name, "model")), **data}
  family = data.get("family", "bert")
  if not isinstance(family, str):
    raise ConfigError(f"{field}.family: expected a string, got {family!r}")
  return {**family_defaults(family), **data}


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks; dotted overrides; YAML files.


def _check_value(tp: Any, value: Any, field: str) -> Any:
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if tp is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    for arg in args:
      try:
        return _check_value(arg, value, field)
      except ConfigError:
        pass
    raise ConfigError(f"{field}: {value!r} does not match {_type_name(tp)}")
  if tp is type(None):
    if value is None:
      return None
    raise ConfigError(f"{field}: expected null, got {value!r}")
  if origin is Literal:
    if value in args:
      return value
    raise ConfigError(f"{field}: {value!r} is not one of {list(args)}")
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{field}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_check_value(args[0], v, f"{field}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise ConfigError(f"{field}: expected {len(args)} items, got {len(value)}")
    return tuple(_check_value(a, v, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    if not isinstance(value, dict):
      raise ConfigError(f"{field}: expected a mapping, got {value!r}")
    return from_dict(tp, value, prefix=field)
  if tp is bool:
    if isinstance(value, bool):
      return value
    raise ConfigError(f"{field}: expected true/false, got {value!r}")
  if tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise ConfigError(f"{field}: expected an integer, got {value!r}")
  if tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
      try:
        return float(value)
      except ValueError:
        pass
    raise ConfigError(f"{field}: expected a number, got {value!r}")
  if tp is str:
    if isinstance(value, str):
      return value
    raise ConfigError(f"{field}: expected a string, got {value!r}")
  return value


def _type_name(tp: Any) -> str:
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key(cls, key: str, prefix: str) -> ConfigError:
  names = [f.name for f in dataclasses.fields(cls)]
  close = difflib.get_close_matches(key, names, n=1)
  hint = f"; did you mean {prefix}{close[0]}?" if close else ""
  return ConfigError(f"unknown config key {prefix}{key}{hint}")


def from_dict(cls, data: dict, prefix: str = ""):
  """Build dataclass ``cls`` from a (nested) dict, checking every key and type."""
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  dotted = f"{prefix}." if prefix else ""
  defaults = {f.name: f.default for f in dataclasses.fields(cls)}
  for key, value in data.items():
    if key not in fields:
      raise _unknown_key(cls, key, dotted)
    if dataclasses.is_dataclass(defaults[key]) and isinstance(value, dict):
      value = deep_merge(to_dict(defaults[key]), value)  # a section starts from its default
    kwargs[key] = _check_value(hints[key], value, f"{dotted}{key}")
  try:
    return cls(**kwargs)
  except TypeError as e:  # missing required fields
    raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(cfg) -> dict:
  """Dataclass -> plain dict of YAML-safe values (tuples become lists)."""

  def convert(v):
    if dataclasses.is_dataclass(v):
      return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (tuple, list)):
      return [convert(x) for x in v]
    return v

  return convert(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
  """``a.b.c=value`` -> (["a","b","c"], parsed YAML scalar/list)."""
  if "=" not in text:
    raise ConfigError(f"override {text!r} is not of the form key=value")
  key, raw = text.split("=", 1)
  if not key or any(not part for part in key.split(".")):
    raise ConfigError(f"override {text!r} has an empty key")
  try:
    value = yaml.safe_load(raw) if raw != "" else ""
  except yaml.YAMLError:
    value = raw
  return key.split("."), value


def merge_into(base: dict, path: list[str], value: Any) -> None:
  node = base
  for part in path[:-1]:
    node = node.setdefault(part, {})
    if not isinstance(node, dict):
      raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
  node[path[-1]] = value


def deep_merge(base: dict, update: dict) -> dict:
  out = dict(base)
  for k, v in update.items():
    if isinstance(v, dict) and isinstance(out.get(k), dict):
      out[k] = deep_merge(out[k], v)
    else:
      out[k] = v
  return out


def _validate_path(cls, path: list[str]) -> None:
  for i, part in enumerate(path):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    if part not in fields:
      raise _unknown_key(cls, part, ".".join(path[:i]) + ("." if i else ""))
    tp = hints[part]
    if i < len(path) - 1:
      if not dataclasses.is_dataclass(tp):
        raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
      cls = tp


def load_yaml(path: str | Path) -> dict:
  from bertjax.storage import as_path

  path = as_path(path)
  try:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
  except FileNotFoundError:
    raise ConfigError(f"config file {path} does not exist") from None
  except IsADirectoryError:
    raise ConfigError(f"config file {path} is a folder") from None
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
  except yaml.YAMLError as e:
    raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: expected a mapping at the top level")
  return data
