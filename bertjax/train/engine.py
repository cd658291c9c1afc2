"""The training engine shared by pretraining and fine-tuning.

``build_engine``: an abstract sharded model + an objective + an optimizer -> the train state's
layout on the active mesh and the one jitted, donated step, planned from shapes alone (nothing
is allocated: the same plan compiles for a TPU pod from a CPU machine); ``Engine.init`` /
``init_from`` or a checkpoint restore materialises the state. ``run_steps``: the step loop inside a run
(``train/run.py``) -- metrics read one step late (the host never waits on the step it just
dispatched), periodic evaluation through a callback, Orbax checkpoints with the data iterator,
``run.stop`` (SIGTERM) -> save and stop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import sharding
from bertjax.errors import NonFiniteError
from bertjax.params import with_values
from bertjax.train.run import Run
from bertjax.train.step import (Optimizer, TrainState, init_state, make_eval_step,
                                make_train_step)


@dataclasses.dataclass
class Engine:
  """The jitted steps and everything they need, planned from shapes alone; ``state`` stays
  None until ``init`` / ``init_from`` (or a checkpoint restore) materialises it."""
  mesh: jax.sharding.Mesh
  graphdef: Any
  abstract: TrainState  # jax.ShapeDtypeStruct leaves carrying the state's shardings
  batch_sh: dict  # input name -> sharding
  train_step: Callable  # jitted (state, batch) -> (state, metrics)
  eval_step: Callable  # jitted (params, batch, frozen) -> objective sums
  objective: Any
  tx: Optimizer  # a transformation, or one made for the run's (traced) total step count
  seed: int
  total_steps: int  # the run's length: state.total_steps, which the LR schedule reads
  max_skips: int = 0  # non-finite steps tolerated in a row (0: train.on_nonfinite=stop)
  state: TrainState | None = None

  @property
  def state_sh(self) -> TrainState:
    return sharding.shardings_of(self.abstract)

  def batch(self, local: dict) -> dict:
    """This process's rows -> one global batch on the mesh."""
    return sharding.global_batch(local, self.batch_sh)

  def abstract_state(self) -> TrainState:
    """The state's shapes with this mesh's shardings: the target a checkpoint restores into."""
    return self.abstract

  def abstract_batch(self, shapes: dict) -> dict:
    """Global batch shapes ({name: (shape, dtype)} or arrays) as sharded ShapeDtypeStructs."""
    out = {}
    for k, v in shapes.items():
      shape, dtype = (v.shape, v.dtype) if hasattr(v, "shape") else v
      out[k] = jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=self.batch_sh[k])
    return out

  def init(self, make_model: Callable[[], nnx.Module], frozen=None,
           values: dict | None = None) -> None:
    """A fresh state: ``make_model()`` initialised by one jitted program straight into the
    state's shardings; ``values`` ({name: array}) replace the fresh parameters they name."""
    graphdef, tx, seed = self.graphdef, self.tx, self.seed

    def fresh(values, frozen, total):
      params = nnx.split(make_model())[1]
      if values:
        params = with_values(params, values, strict=False, place=False)
      return init_state(graphdef, params, tx, seed, frozen, total)

    self.state = jax.jit(fresh, out_shardings=self.state_sh)(values or {}, frozen,
                                                             np.int32(self.total_steps))

  def init_from(self, params, frozen=None, *, donate: bool = True) -> None:
    """A state from parameters already laid out on the mesh (restored, or taken from a
    teacher); with ``donate`` their buffers become the state's (not when they alias
    ``frozen``'s, as a distillation student's taken from its teacher do)."""
    graphdef, tx, seed = self.graphdef, self.tx, self.seed
    self.state = jax.jit(lambda p, f, t: init_state(graphdef, p, tx, seed, f, t),
                         out_shardings=self.state_sh,
                         donate_argnums=(0, 1) if donate else ())(params, frozen,
                                                                  np.int32(self.total_steps))

  def adopt(self, state: TrainState) -> None:
    """A restored state, with this run's length (a resumed run may change ``train.steps``:
    the compiled step reads it from the state)."""
    total = jax.device_put(np.int32(self.total_steps), self.state_sh.total_steps)
    self.state = state.replace(total_steps=total)

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state.params)


def opt_state_shardings(abstract_opt, abstract_params, param_shardings, mesh):
  """Optimizer slots (Adam mu/nu, ...) mirror the parameters: a slot whose path ends with a
  parameter's path (and has its shape) takes that parameter's sharding; scalars (counts) are
  replicated. Any other array is an error, never a silent full replication."""
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_sh = jax.tree_util.tree_leaves(param_shardings)
  for (path, leaf), sh in zip(flat_params, flat_sh):
    by_path[tuple(str(k) for k in path)] = (leaf.shape, sh)
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      shape, sh = by_path.get(keys[start:], (None, None))
      if shape == tuple(leaf.shape):
        return sh
    if not leaf.shape:
      return replicated
    raise ValueError(f"optimizer state {jax.tree_util.keystr(path)} {tuple(leaf.shape)} matches "
                     "no parameter: it would be replicated on every device")

  return jax.tree_util.tree_map_with_path(one, abstract_opt)


def build_engine(graphdef, abstract_params, objective, tx: Optimizer, *, seed: int,
                 total_steps: int = 0, example_batch: dict, grad_accum_steps: int = 1,
                 lr_schedule=None, abstract_frozen=None, max_skips: int = 0) -> Engine:
  """Plan the train state and jit the steps from shapes and the mesh alone -- nothing runs
  on a device, so this works on compile-only TPU meshes (``bertjax compile``).

  ``abstract_params``: ``sharding.abstract_model``'s state; ``abstract_frozen``: parameters
  used but never trained (a distillation teacher), abstract too; ``example_batch``: arrays or
  ShapeDtypeStructs naming the batch's inputs and ranks. Call under ``sharding.use_mesh``."""
  mesh, _ = sharding.layout()
  param_sh = sharding.shardings_of(abstract_params)
  frozen_sh = None if abstract_frozen is None else sharding.shardings_of(abstract_frozen)
  abstract = jax.eval_shape(lambda p, f: init_state(graphdef, p, tx, seed, f, total_steps),
                            abstract_params, abstract_frozen)
  replicated = NamedSharding(mesh, P())
  state_sh = TrainState(step=replicated, params=param_sh,
                        opt_state=opt_state_shardings(abstract.opt_state, abstract.params,
                                                      param_sh, mesh),
                        key=replicated, frozen=frozen_sh,
                        guard=jax.tree.map(lambda _: replicated, abstract.guard),
                        total_steps=replicated)
  abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          abstract, state_sh)
  batch_sh = {k: sharding.batch_sharding(mesh, ndim=len(v.shape)) for k, v in example_batch.items()}
  train_step = jax.jit(make_train_step(graphdef, objective, tx, grad_accum_steps, lr_schedule,
                                       max_skips),
                       in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(graphdef, objective),
                      in_shardings=(state_sh.params, batch_sh, frozen_sh))
  return Engine(mesh, graphdef, abstract, batch_sh, train_step, eval_step, objective, tx, seed,
                total_steps, max_skips)


def to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@dataclasses.dataclass
class LoopResult:
  step: int
  preempted: bool
  stopped_early: bool
  train: dict  # the last logged training metrics


def run_steps(engine: Engine, batches: Iterator[dict], run: Run, *, start: int, steps: int,
              log_every: int, eval_every: int = 0, evaluate: Callable[[int], bool] | None = None,
              data_iterator=None, tokens_per_step: int = 0, flops_per_step: float = 0.0,
              peak_flops: float = 0.0, on_step: Callable[[int], None] | None = None) -> LoopResult:
  """Train from ``start`` to ``steps``. ``evaluate(step)`` runs every ``eval_every`` steps (not
  at the last step: the caller evaluates the final state) and returns True to stop early.
  ``data_iterator`` (a grain iterator) is saved with every checkpoint. A halted non-finite
  guard raises ``NonFiniteError`` before anything else is saved or evaluated."""
  host = _Host(engine, run, data_iterator, steps, start)
  speed = _Throughput(tokens_per_step, flops_per_step, peak_flops)
  step, stopped_early, last = start, False, {}
  pending = None  # (step, metrics still on the device) of the step before the current one
  while step < steps and not stopped_early and not run.should_stop():
    engine.state, metrics = engine.train_step(engine.state, engine.batch(next(batches)))
    step += 1
    # The previous step's metrics: the device is already past it, so reading them does not
    # stall the step just dispatched.
    if pending is not None and (pending[0] % log_every == 0 or pending[0] == start + 1):
      last = host.metrics(pending[1])
      speed.add_to(last, pending[0])
      host.write(pending[0], last)
    pending = (step, metrics)
    if on_step is not None:
      on_step(step)
    if evaluate is not None and eval_every and step % eval_every == 0 and step < steps:
      host.check_guard(engine.state.guard)  # never evaluate a halted state
      stopped_early = bool(evaluate(step))
    if run.checkpointer.should_save(step):
      host.save(step)
    host.progress.update(step)

  if pending is not None:  # the last step's row (also the step a SIGTERM saves)
    m = host.metrics(pending[1])
    host.write(pending[0], m)
    last = {**last, **m}
  if run.checkpointer.latest_step() != step:
    host.save(step, force=True)
  run.checkpointer.wait()
  if run.stop.is_set() and step < steps:
    host.progress.log(f"SIGTERM: saved step {step} to {run.checkpointer.directory}; exiting")
    return LoopResult(step, True, False, last)
  return LoopResult(step, False, stopped_early, last)


class _Host:
  """What ``run_steps`` does on the host besides dispatching steps: reading a step's metrics
  back (the non-finite guard with them), writing them, and checkpoints."""

  def __init__(self, engine: Engine, run: Run, data_iterator, steps: int, start: int):
    self.engine, self.run, self.data_iterator = engine, run, data_iterator
    self.progress = run.show_progress(steps, start)
    self.skipped = 0  # non-finite steps skipped so far (train.on_nonfinite=skip)

  def check_guard(self, guard) -> None:
    """Stop on a halted guard; report newly skipped steps."""
    g = {k: int(v) for k, v in to_host(guard).items()}
    max_skips = self.engine.max_skips
    if g["halted"]:
      saved = self.run.checkpointer.latest_step()
      where = (f"step {g['last_bad']}: the loss or the gradients are not finite "
               "(train.on_nonfinite=stop)" if max_skips == 0 else
               f"steps {g['last_bad'] - g['in_a_row'] + 1}-{g['last_bad']}: {g['in_a_row']} "
               f"non-finite steps in a row (train.max_consecutive_skips={max_skips})")
      raise NonFiniteError(
          f"{where}; training stopped without saving them -- the last checkpoint is "
          f"{'none' if saved is None else f'step {saved}'}; lower optim.learning_rate"
          + (" or resume with train.on_nonfinite=skip" if max_skips == 0 else ""))
    if g["skipped"] > self.skipped:
      self.run.log(f"step {g['last_bad']}: non-finite loss or gradients, update skipped "
                   f"({g['skipped']} skipped so far)")
      self.skipped = g["skipped"]

  def metrics(self, on_device: dict) -> dict:
    """A step's summed metrics -> the logged ones (waits until that step completed)."""
    host = to_host(on_device)
    self.check_guard(host.pop("guard"))
    m = self.engine.objective.finalize(host)
    m.update(grad_norm=float(host["grad_norm"]))
    if "learning_rate" in host:
      m["learning_rate"] = float(host["learning_rate"])
    if self.skipped:
      m["skipped_steps"] = self.skipped
    return m

  def write(self, step: int, m: dict) -> None:
    self.run.writer.write(step, m)
    line = f"loss {m['loss']:.4f}"
    if "tokens_per_second" in m:
      line += f" {m['tokens_per_second']:,.0f} tok/s"
    self.progress.update(step, line + (f" MFU {m['mfu']:.1%}" if "mfu" in m else ""))

  def save(self, step: int, force: bool = False) -> None:
    self.check_guard(self.engine.state.guard)  # never a halted state
    checkpointer = self.run.checkpointer
    if checkpointer.save(step, self.engine.state, self.data_iterator, force=force):
      self.progress.log(f"step {step}: checkpoint saving to {checkpointer.directory}")
      self.run.writer.checkpointed(step)  # the history up to it reaches the run folder with it


@dataclasses.dataclass
class _Throughput:
  """tokens/s and MFU over completed device work: the wall time between reading back two
  steps' metrics (each read waits for its step), over the steps completed in between --
  checkpoints and evaluations inside a window count, compilation (before the first read) does
  not."""

  tokens_per_step: int
  flops_per_step: float
  peak_flops: float
  since: float = 0.0
  since_step: int | None = None

  def add_to(self, m: dict, step: int) -> None:
    now = time.perf_counter()
    if self.since_step is not None and self.tokens_per_step and step > self.since_step:
      tps = self.tokens_per_step * (step - self.since_step) / (now - self.since)
      m["tokens_per_second"] = tps
      if self.flops_per_step and self.peak_flops:
        m["mfu"] = self.flops_per_step * tps / self.tokens_per_step / self.peak_flops
    self.since, self.since_step = now, step
