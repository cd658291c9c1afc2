"""A bertjax model folder: ``config.yaml`` + ``params/`` (Orbax) + ``tokenizer/``.

This is what ``import-hf`` and training write and ``embed`` / ``fill-mask`` / ``export-hf`` /
fine-tuning read (a run's checkpoints are ``train/checkpointer.py``'s). Local or on object
storage (``bertjax.storage``); a failed write never leaves a half folder that reads as whole.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx

from bertjax import layout, sharding, storage
from bertjax.config import ConfigError, ModelConfig, family_defaults, from_dict, load_yaml, to_dict
from bertjax.data.tokenizer import Tokenizer
from bertjax.models import Model
from bertjax.params import assign_flat_params, flat_params, leaf_name, with_values


def _nest(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def save_model_dir(dst: str | Path, model: Model, tokenizer: Tokenizer | None = None,
                   *, overwrite: bool = False) -> Path:
  """Write a model folder, whole or not at all (``storage.publish_dir``: a renamed temporary
  sibling locally, a commit marker on object storage). Multi-host safe: every process calls
  this (Orbax writes each process's shards); process 0 writes the small files."""
  from jax.experimental import multihost_utils

  primary = jax.process_index() == 0
  barrier = lambda name: multihost_utils.sync_global_devices(f"bertjax:save_model_dir:{name}")
  with storage.publish_dir(dst, overwrite=overwrite, primary=primary, barrier=barrier) as tmp:
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(tmp / layout.PARAMS, _nest(flat_params(model)))
    barrier(layout.PARAMS)
    if primary:
      storage.write_text(tmp / layout.CONFIG,
                         yaml.safe_dump({"model": to_dict(model.config)}, sort_keys=False))
      if tokenizer is not None:
        tokenizer.save(tmp / layout.TOKENIZER)
  return storage.absolute(dst)


def resolve_model_dir(path: str | Path) -> Path:
  """A model folder, or a pretraining run folder (its exported ``model/``). A folder on object
  storage must be complete (its commit marker)."""
  path = storage.as_path(path)
  if not (path / layout.PARAMS).exists() and (path / layout.MODEL / layout.PARAMS).exists():
    path = path / layout.MODEL
  storage.check_published(path, "model folder")
  return path


def read_model_config(path: str | Path) -> ModelConfig:
  path = resolve_model_dir(path)
  cfg_file = path / layout.CONFIG
  if not cfg_file.exists():
    raise ConfigError(f"{path} is not a bertjax model folder (no config.yaml)")
  data = load_yaml(cfg_file)
  if not isinstance(data.get("model"), dict):
    raise ConfigError(f"{cfg_file}: no 'model' section")
  # a field added after the folder was saved takes its family's value
  family = family_defaults(str(data["model"].get("family", "bert")))
  return from_dict(ModelConfig, {**family, **data["model"]}, prefix="model")


def load_model_dir(path: str | Path, *, mesh=None,
                   overrides: dict | None = None) -> tuple[Model, Tokenizer | None]:
  """Load a model folder; parameters land sharded on ``mesh`` (or on the mesh of an enclosing
  ``sharding.use_mesh``), else on the default device.

  ``overrides`` replaces config fields that do not change parameter shapes (dropout,
  attention_impl, dtype).
  """
  path = resolve_model_dir(path)
  cfg = read_model_config(path)
  if overrides:
    cfg = dataclasses.replace(cfg, **overrides)
  make = lambda: Model(cfg, rngs=nnx.Rngs(0))
  if mesh is not None or sharding.active_mesh() is not None:
    tokenizer = read_tokenizer(path)
    if tokenizer is not None:
      check_vocab(cfg.vocab_size, tokenizer.vocab_size, f"model folder {path}")
    graphdef, abstract = sharding.abstract_model(make, mesh)
    return nnx.merge(graphdef, restore_params(path, abstract)), tokenizer
  tokenizer = read_tokenizer(path)
  if tokenizer is not None:
    check_vocab(cfg.vocab_size, tokenizer.vocab_size, f"model folder {path}")
  model = make()
  assign_flat_params(model, read_model_params(path))
  return model, tokenizer


def restore_params(path: str | Path, abstract_state, *, only: set[str] | None = None):
  """A model folder's parameters read straight into ``abstract_state``'s shardings and dtypes
  (``sharding.abstract_model``): each process reads only the shards it holds; nothing is
  initialised first or gathered on a host. ``only``: restore just these names (the rest of the
  returned state stays abstract). Shapes are checked against the folder's metadata first."""
  params = _params_dir(path)
  saved = read_param_shapes(path)
  wanted = {}

  def collect(p, var):
    name = leaf_name(p)
    if only is None or name in only:
      wanted[name] = var.get_value()
    return var

  jax.tree_util.tree_map_with_path(collect, abstract_state,
                                   is_leaf=lambda x: isinstance(x, nnx.Variable))
  bad = sorted(n for n, a in wanted.items() if saved.get(n) != tuple(a.shape))
  if bad:
    n = bad[0]
    raise ConfigError(f"{params.parent}: parameter {n} is "
                      f"{'missing' if n not in saved else saved[n]}, the model needs "
                      f"{tuple(wanted[n].shape)} ({len(bad)} such)")
  target = _nest({n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
                  for n, a in wanted.items()})
  try:
    with ocp.PyTreeCheckpointer() as ckpt:  # partial_restore: a subset of the saved tree
      restored = _flatten(ckpt.restore(params, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))
  except Exception as e:
    raise _unreadable(params, e) from None
  return with_values(abstract_state, {n: restored[n] for n in wanted}, strict=False)


def read_model_params(path: str | Path) -> dict[str, np.ndarray]:
  """A model folder's parameters as flat host arrays ({"encoder.layers.0...": array})."""
  path = _params_dir(path)
  try:
    with ocp.StandardCheckpointer() as ckpt:
      # numpy targets: restore to host memory, whatever devices (or processes) saved it
      meta = ckpt.metadata(path).item_metadata
      restored = ckpt.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta))
  except Exception as e:  # a damaged folder: whatever the Orbax/tensorstore reader raises
    raise _unreadable(path, e) from None
  return {k: np.asarray(v) for k, v in _flatten(restored).items()}


def read_param_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
  """A model folder's parameter shapes, from the Orbax metadata alone (nothing is loaded)."""
  path = _params_dir(path)
  try:
    with ocp.StandardCheckpointer() as ckpt:
      meta = ckpt.metadata(path).item_metadata
  except Exception as e:
    raise _unreadable(path, e) from None
  return {k: tuple(v.shape) for k, v in _flatten(dict(meta)).items()}


def _params_dir(path: str | Path) -> Path:
  path = storage.absolute(resolve_model_dir(path) / layout.PARAMS)
  if not path.is_dir():
    raise ConfigError(f"{path.parent} is not a bertjax model folder (no params/)")
  return path


def _unreadable(path: Path, e: Exception) -> ConfigError:
  return ConfigError(f"{path}: unreadable model parameters ({type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0][:160]})")


def read_tokenizer(path: str | Path) -> Tokenizer | None:
  tok_dir = resolve_model_dir(path) / layout.TOKENIZER
  return Tokenizer.from_dir(tok_dir) if tok_dir.is_dir() else None


def check_vocab(model_vocab: int, token_ids: int, what: str, fix: str = "") -> None:
  """A model whose embedding table has fewer rows than the ids it will be fed: a gather clamps
  the extra ids onto the last row and the model trains or answers on garbage -- refuse it."""
  if model_vocab < token_ids:
    raise ConfigError(f"{what}: the tokenizer has {token_ids} ids but the model's vocabulary "
                      f"(model.vocab_size) has {model_vocab}" + (f"; {fix}" if fix else ""))

