"""The train state and the one jitted step ``(state, batch) -> (state, metrics)``.

The model lives as ``nnx.split`` state; the step merges it inside (Flax's functional NNX
style), so jit sees plain pytrees with explicit shardings and the state buffers are donated.

The learning-rate schedule reads the run's length from ``state.total_steps`` (a traced
scalar): runs of any length share one compiled step, and a resumed run may change
``train.steps`` without a recompile. ``tx`` is an optax transformation, or a function
``total_steps -> transformation`` (``train.optim.make_optimizer`` with its config bound).

A step whose loss or gradient norm is not finite leaves parameters and optimizer state as they
were (a select on device, no host sync); ``state.guard`` counts such steps and halts all
updates once more than ``max_skips`` came in a row. The host reads the guard with the deferred
metrics and ends the run; a halted state is never saved.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any  # nnx.State of nnx.Param
  opt_state: Any
  key: jax.Array  # uint32[2] base key; step keys are fold_in(key, step) -> resume-exact
  frozen: Any = None  # parameters used but never trained (a distillation teacher)
  guard: Any = None  # non-finite steps: {"skipped", "in_a_row", "last_bad", "halted"}
  total_steps: Any = None  # int32 scalar: the run's length, read by the LR schedule


# an optax transformation, or one made for a run's (traced) total step count
Optimizer = Union[optax.GradientTransformation, Callable[[Any], optax.GradientTransformation]]


def optimizer_for(tx: Optimizer, total_steps) -> optax.GradientTransformation:
  return tx if isinstance(tx, optax.GradientTransformation) else tx(total_steps)


def init_state(graphdef, params, tx: Optimizer, seed: int, frozen=None,
               total_steps: int = 0) -> TrainState:
  guard = {"skipped": jnp.zeros((), jnp.int32), "in_a_row": jnp.zeros((), jnp.int32),
           "last_bad": jnp.full((), -1, jnp.int32), "halted": jnp.zeros((), jnp.bool_)}
  total = jnp.asarray(total_steps, jnp.int32)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer_for(tx, total).init(params),
                    key=jax.random.PRNGKey(seed), frozen=frozen, guard=guard, total_steps=total)


def _guarded(state: TrainState, params, opt_state, finite: jax.Array, max_skips: int):
  """Apply the update only if this step is finite and the run is not halted."""
  g = state.guard
  in_a_row = jnp.where(finite, 0, g["in_a_row"] + 1)
  halted = g["halted"] | (in_a_row > max_skips)
  apply = finite & ~halted
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  guard = {"skipped": g["skipped"] + (~finite).astype(jnp.int32), "in_a_row": in_a_row,
           "last_bad": jnp.where(finite, g["last_bad"], state.step + 1), "halted": halted}
  return keep(params, state.params), keep(opt_state, state.opt_state), guard


def _call(objective, model, batch, key, totals, frozen):
  extra = {} if frozen is None else {"frozen": jax.lax.stop_gradient(frozen)}
  return objective(model, batch, key, totals, **extra)


def _split_microbatches(batch, n: int):
  """[B, ...] -> [n, B/n, ...] taking every n-th row, so each microbatch keeps the batch
  sharding spread over all data-parallel devices."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(graphdef, objective, tx: Optimizer, grad_accum_steps: int = 1,
                    lr_schedule: Callable | None = None, max_skips: int = 0):
  """``lr_schedule(step, total_steps)``, if given, is reported as the metric ``learning_rate``."""

  def loss_fn(params, micro, key, totals, frozen):
    return _call(objective, nnx.merge(graphdef, params), micro, key, totals, frozen)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(state.key, state.step)
    totals = objective.totals(batch)
    if grad_accum_steps == 1:
      (loss, sums), grads = grad_fn(state.params, batch, key, totals, state.frozen)
    else:
      micro = _split_microbatches(batch, grad_accum_steps)

      def body(carry, xs):
        i, mb = xs
        (loss, sums), grads = grad_fn(state.params, mb, jax.random.fold_in(key, i), totals,
                                      state.frozen)
        acc = jax.tree.map(jnp.add, carry, (loss, sums, grads))
        return acc, None

      zeros = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro),
                                             key, totals, state.frozen))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[0][0], zeros[0][1], zeros[1]))
      (loss, sums, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
    updates, opt_state = optimizer_for(tx, state.total_steps).update(grads, state.opt_state,
                                                                     state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    params, opt_state, guard = _guarded(state, params, opt_state,
                                        jnp.isfinite(loss) & jnp.isfinite(grad_norm), max_skips)
    metrics = dict(sums, objective=loss, grad_norm=grad_norm, guard=guard)
    if lr_schedule is not None:
      metrics["learning_rate"] = lr_schedule(state.step, state.total_steps)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, guard=guard)
    return new, metrics

  return train_step


def make_eval_step(graphdef, objective):

  def eval_step(params, batch, frozen=None) -> dict:
    model = nnx.merge(graphdef, params)
    _, sums = _call(objective, model, batch, None, objective.totals(batch), frozen)
    return sums

  return eval_step
