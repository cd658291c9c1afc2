"""Parameters as a flat ``{"encoder.layers.0.attention.query.kernel": array}`` mapping."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


def path_str(path) -> str:
  return ".".join(str(p) for p in path)


def flat_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Every parameter once (shared ones, like ELECTRA's embeddings, under their first path)."""
  return {path_str(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
  return {k: v.get_value() for k, v in flat_variables(model).items()}


def flat_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Parameter shapes; works on abstract (``nnx.eval_shape``) models too."""
  return {k: tuple(v.get_value().shape) for k, v in flat_variables(model).items()}


def leaf_name(path) -> str:
  """A pytree path into an ``nnx.State`` as its flat parameter name."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def with_values(state, values: dict, *, strict: bool = True, place: bool = True):
  """``state`` (abstract or not) with the leaves named in ``values`` replaced, each cast to the
  leaf's dtype and (``place``; not inside jit) put on its sharding -- a no-op for arrays
  already there. ``strict``: every leaf must be named."""
  missing = []

  def one(path, var):
    name = leaf_name(path)
    if name not in values:
      missing.append(name)
      return var
    ref, new = var.get_value(), values[name]
    if tuple(new.shape) != tuple(ref.shape):
      raise ValueError(f"parameter {name}: shape {tuple(new.shape)} != expected {tuple(ref.shape)}")
    new = new.astype(ref.dtype) if new.dtype != ref.dtype else new
    if not place:
      return var.replace(jax.numpy.asarray(new))
    sh = getattr(ref, "sharding", None)
    return var.replace(jax.device_put(new, sh) if sh is not None else jax.numpy.asarray(new))

  out = jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  if strict and missing:
    raise ValueError(f"parameter mismatch: missing {missing[:10]}")
  return out


def assign_flat_params(model: nnx.Module, values: dict[str, np.ndarray], *, strict: bool = True):
  """Write ``values`` into ``model`` in place, keeping each parameter's dtype and sharding."""
  state = nnx.state(model, nnx.Param)
  flat = dict((path_str(p), v) for p, v in nnx.to_flat_state(state))
  if strict:
    missing = sorted(set(flat) - set(values))
    extra = sorted(set(values) - set(flat))
    if missing or extra:
      raise ValueError(f"parameter mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
  for key, var in flat.items():
    if key not in values:
      continue
    old = var[...]
    new = np.asarray(values[key])
    if tuple(new.shape) != tuple(old.shape):
      raise ValueError(f"parameter {key}: shape {tuple(new.shape)} != expected {tuple(old.shape)}")
    sharding = getattr(old, "sharding", None)
    arr = jax.numpy.asarray(new, dtype=old.dtype)
    var[...] = jax.device_put(arr, sharding) if sharding is not None else arr
  nnx.update(model, state)
  return model

