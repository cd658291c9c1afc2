"""Rematerialisation policies for one encoder layer (``model.remat``), in MaxText's style.

The backward pass needs each layer's intermediate activations; a policy says which to keep
through the forward pass and which to recompute:

  * ``none``: keep everything (no ``jax.checkpoint``).
  * ``full``: keep only the layer's input; recompute the whole layer.
  * ``dots``: keep the outputs of matmuls without batch dimensions (the projections), recompute
    the attention scores and elementwise work (``dots_with_no_batch_dims_saveable``).
  * ``names``: keep only the activations named in ``model.remat_names`` (``checkpoint_name``
    tags in nn/attention.py and nn/mlp.py; ``CHECKPOINT_NAMES``).
  * ``offload``: like ``names``, but the kept activations move to host memory between the
    passes (TPU/GPU; XLA:CPU has no host memory space).
"""

from __future__ import annotations

from typing import Callable

import jax


def policy(remat: str, names: tuple[str, ...]) -> Callable | None:
  """The ``jax.checkpoint`` policy for ``model.remat``; None for ``none`` (no checkpoint)."""
  cp = jax.checkpoint_policies
  if remat == "none":
    return None
  if remat == "full":
    return cp.nothing_saveable
  if remat == "dots":
    return cp.dots_with_no_batch_dims_saveable
  if remat == "names":
    return cp.save_only_these_names(*names)
  if remat == "offload":
    return cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(names),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"unknown remat policy {remat!r}")


def checkpointed(fn: Callable, remat: str, names: tuple[str, ...]) -> Callable:
  """``fn`` under the policy (itself for ``none``)."""
  p = policy(remat, names)
  return fn if p is None else jax.checkpoint(fn, policy=p)
