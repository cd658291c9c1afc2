"""Meshes, logical-axis rules and shardings.

Parameters carry logical axis names (``nnx.Param(..., logical_axes=(...))``); one rules table
maps each logical name to a mesh axis (``data``, ``fsdp``, ``tensor``) or None (replicated). The
same code runs on 1 CPU device, 8 fake CPU devices and a TPU pod: only the mesh shape changes.

A mesh travels alone: ``with use_mesh(mesh, rules):`` binds a config's rules to it, and every
function here that takes ``mesh`` (or finds the active one when given none) reads them from
there -- the default table otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from bertjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None). Weights: FSDP shards the model width,
# tensor parallelism shards heads / MLP width / vocab. Activations shard only their batch.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_factor", None),
    ("hidden", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("position", None),
    ("type", None),
    ("norm", None),
    ("classes", None),
)


def make_mesh(shape: dict[str, int] | Sequence[int] | Any = None,
              devices: Sequence[jax.Device] | None = None, slices: int | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types; -1 on one axis takes the rest.

  ``shape`` may be a MeshConfig (its ``slices`` too), a dict or a 3-sequence. Devices keep
  ``jax.devices()`` order (never ``device.id``, which is not contiguous across processes),
  except on TPU, where ``mesh_utils`` lays the axes along the chips' torus. ``slices`` > 1:
  the data axis spans the slices (DCN), fsdp and tensor stay inside each one (ICI).
  """
  devices = list(jax.devices() if devices is None else devices)
  if shape is None:
    sizes = [-1, 1, 1]
  elif isinstance(shape, dict):
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    slices = shape.get("slices", 1) if slices is None else slices
  elif hasattr(shape, "data"):
    sizes = [shape.data, shape.fsdp, shape.tensor]
    slices = shape.slices if slices is None else slices
  else:
    sizes = list(shape)
  slices = 1 if slices is None else slices
  if slices < 1:
    raise UserError(f"mesh.slices must be >= 1, got {slices}")
  if sizes.count(-1) > 1:
    raise UserError(f"mesh shape {sizes}: at most one axis (mesh.data/fsdp/tensor) may be "
                    "-1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"mesh shape {sizes} does not divide the {len(devices)} devices; change "
                      "mesh.data/fsdp/tensor")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  return Mesh(_arrange(devices, sizes, slices), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _arrange(devices: list, sizes: list[int], slices: int) -> np.ndarray:
  """The device array for ``sizes``: ``slices`` granules along the data axis."""
  from jax.experimental import mesh_utils

  tpu = devices[0].platform == "tpu"
  if slices == 1:
    if tpu and getattr(devices[0], "slice_index", None) in (None, 0) and len(
        {getattr(d, "slice_index", None) for d in devices}) == 1:
      try:
        return mesh_utils.create_device_mesh(sizes, devices)  # ICI-aware on the torus
      except NotImplementedError:  # an axis that is no product of the torus' dimensions
        torus = "x".join(str(1 + max(d.coords[i] for d in devices))
                         for i in range(len(devices[0].coords)))
        raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))}: each axis must be a product of "
                        f"the slice's torus dimensions ({torus}); change mesh.data/fsdp/"
                        "tensor") from None
    return np.asarray(devices).reshape(sizes)
  if sizes[0] % slices:
    raise UserError(f"mesh.data={sizes[0]} must be a multiple of mesh.slices={slices} (only "
                    "data parallelism crosses slices)")
  # granules: the devices' slices (TPU), else their processes (CPU/GPU report one slice)
  in_slices = len({getattr(d, "slice_index", None) for d in devices})
  in_processes = len({d.process_index for d in devices})
  if slices not in (in_slices, in_processes):
    raise UserError(f"mesh.slices={slices}, but the devices form {in_slices} slice(s) in "
                    f"{in_processes} process(es)")
  return mesh_utils.create_hybrid_device_mesh(
      [sizes[0] // slices, sizes[1], sizes[2]], [slices, 1, 1], devices,
      process_is_granule=in_slices != slices)


def rules_dict(rules=None) -> dict[str, Any]:
  table = dict(DEFAULT_RULES)
  table.update(dict(rules or ()))
  return table


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules=None) -> P:
  """Map logical axes to a PartitionSpec. A mesh axis is used at most once; a dimension that
  its mesh axes do not divide stays replicated (odd head counts, vocab not a multiple of 8)."""
  table = rules_dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    target = table.get(name) if name is not None else None
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
    size = math.prod(mesh.shape[t] for t in targets) if targets else 1
    if not targets or (shape is not None and shape[i] % size):
      spec.append(None)
      continue
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else targets)
  return P(*spec)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh | None = None):
  """A tree like ``state`` whose leaves are NamedShardings derived from ``logical_axes``."""
  mesh, rules = layout(mesh)

  def one(var):
    axes = var.get_metadata().get("logical_axes")
    shape = getattr(var.get_value(), "shape", None)
    if axes is None:
      spec = P()
    else:
      spec = logical_to_spec(axes, shape, mesh, rules)
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=_is_var)


def abstract_model(make_model, mesh: Mesh | None = None):
  """``make_model()``'s graph and state without allocating anything: (graphdef, state) whose
  leaves are ``jax.ShapeDtypeStruct``s carrying their NamedShardings on ``mesh``. Runs nothing
  on any device, so it works on compile-only TPU meshes too."""
  graphdef, state = nnx.split(nnx.eval_shape(make_model))
  return graphdef, jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), state,
      state_shardings(state, mesh))


def shardings_of(abstract):
  """The NamedShardings of an abstract tree (``abstract_model``'s state, a train state)."""
  return jax.tree.map(lambda a: a.sharding, abstract)


def materialize(make_model, abstract_state):
  """The state of a fresh ``make_model()``, initialised by one jitted program straight into
  ``abstract_state``'s shardings (no host copy, no unsharded intermediate)."""
  return jax.jit(lambda: nnx.split(make_model())[1],
                 out_shardings=shardings_of(abstract_state))()


def create_sharded(make_model, mesh: Mesh | None = None):
  """Build ``make_model()`` directly sharded: abstract init -> shardings -> jitted init."""
  graphdef, abstract = abstract_model(make_model, mesh)
  return nnx.merge(graphdef, materialize(make_model, abstract))


def batch_sharding(mesh: Mesh | None = None, ndim: int = 2) -> NamedSharding:
  """Sharding for a ``[batch, ...]`` input array: batch over the data-parallel axes."""
  mesh, rules = layout(mesh)
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), None, mesh, rules))


def global_batch(local: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Assemble each process's rows into global arrays on the mesh's data axes."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# Activation constraints: active only inside ``use_mesh``; a no-op on a single device.

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Any] | None] = contextvars.ContextVar(
    "bertjax_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=None) -> Iterator[Mesh]:
  token = _ACTIVE.set((mesh, rules))
  try:
    yield mesh
  finally:
    _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Any] | None:
  """(mesh, rules) inside ``use_mesh``, else None."""
  return _ACTIVE.get()


def platform() -> str:
  """Where the code being traced runs: the active mesh's devices decide (compile-only TPU
  devices from ``jax.experimental.topologies`` included), else the default backend."""
  active = _ACTIVE.get()
  return (active[0].devices.flat[0] if active is not None else jax.devices()[0]).platform


def layout(mesh: Mesh | None = None) -> tuple[Mesh, Any]:
  """(mesh, rules): ``mesh`` (the active one if None) with the rules ``use_mesh`` bound to it."""
  active = _ACTIVE.get()
  if mesh is None:
    if active is None:
      raise ValueError("no mesh: pass one, or call inside sharding.use_mesh(mesh)")
    return active
  return (mesh, active[1]) if active is not None and active[0] == mesh else (mesh, None)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(tuple(axes), x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
