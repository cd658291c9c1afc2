"""``bertjax plan``: the mesh split, remat policy, microbatch, attention and scan for a slice,
chosen from a laptop by compiling for the TPU (``aot.py``) as little as possible.

Three stages, each dearer and surer than the one before:

1. **Enumerate** every plan: the slice's chips split into (data, fsdp, tensor) (only data
   crosses slices), each remat policy, each gradient-accumulation split of the global batch
   (``--global-batch max``: each power-of-two microbatch per chip instead), each attention the
   model can use on TPU. Parameters and optimizer state per chip are exact for every mesh
   (abstract shardings, no compile).
2. **Calibrate** a cheap model on small compiles: per remat policy (and attention), the step
   cut to one and to two groups of layers, unrolled, on a pure-FSDP mesh of the same slice(s)
   with the plan's sequences per chip (halved while even that is over HBM). The difference is
   one group's temp memory, FLOPs, HBM bytes and ICI/DCN traffic; extended to the model's depth
   and scaled to each plan (sequences per chip, tensor split, fsdp/data ring sizes,
   microbatches per step), every plan gets a predicted memory and step-time range.
3. **Compile** at full depth, as ``pretrain`` would run them: the configuration as given (the
   baseline); the fastest plan of each other policy that might fit; then the best plans
   predicted to fit, re-ranked after every compile. Memory is what the shallow programs
   predict worst (XLA keeps more or less when it is under no memory pressure, and a scanned
   stack differs from an unrolled one), so each policy's first real compile corrects that
   policy's predicted memory. A compiled plan has its real memory per chip, fits, and the real
   program's collectives; its FLOPs and HBM bytes come from the calibration.

The step-time range is ``aot.py``'s: communication fully hidden behind max(compute, HBM) ...
not hidden at all. Plans are ranked by its upper end (the estimate that assumes no overlap),
then its lower end, then memory per chip; with ``--global-batch max`` by tokens/s per chip.
``--budget`` minutes bound the whole search: a compile that would not fit in what is left is
skipped and said so. The best plan's overrides print last; ``--write`` saves them as a YAML.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import yaml

from bertjax import sharding
from bertjax.config import ConfigError, ExperimentConfig
from bertjax.config.loader import find_preset, load_yaml, merge_into, parse_override
from bertjax.data.pipeline import batch_spec
from bertjax.errors import UserError
from bertjax.train import aot
from bertjax.train.collectives import LIMITS, read_collectives
from bertjax.train.flops import chip, kernel_attention_flops_per_token, step_flops_per_token

GiB = aot.GiB
REMATS = ("none", "dots", "names", "full")  # offload: host transfers are not modelled
MAX_TENSOR = 8  # tensor parallelism beyond one host's chips is not searched
# a policy not yet compiled at full depth: its plans predicted within this many times the HBM
# may fit (its first compile says)
UNCERTAIN = 2.0


@dataclasses.dataclass(frozen=True)
class Plan:
  """One way to run the step: the mesh (data over every slice), remat, microbatches, attention,
  scan, and the global batch."""
  data: int
  fsdp: int
  tensor: int
  remat: str
  accum: int
  attention: str
  scan: bool
  batch: int

  @property
  def mesh(self) -> tuple[int, int, int]:
    return self.data, self.fsdp, self.tensor

  @property
  def per_chip(self) -> float:
    """Sequences each chip's microbatch holds (the batch is split over data x fsdp)."""
    return self.batch / self.accum / (self.data * self.fsdp)

  def overrides(self) -> list[str]:
    return [f"mesh.data={self.data}", f"mesh.fsdp={self.fsdp}", f"mesh.tensor={self.tensor}",
            f"model.remat={self.remat}", f"model.attention_impl={self.attention}",
            f"model.scan_layers={str(self.scan).lower()}", f"train.batch_size={self.batch}",
            f"train.grad_accum_steps={self.accum}"]

  def label(self) -> str:
    return (f"d{self.data}/f{self.fsdp}/t{self.tensor} {self.remat} "
            f"{self.batch // self.accum}x{self.accum} {self.attention}"
            + ("" if self.scan else " unrolled"))


def apply(cfg: ExperimentConfig, plan: Plan, slices: int) -> ExperimentConfig:
  m = dataclasses.replace(cfg.model, remat=plan.remat, attention_impl=plan.attention,
                          scan_layers=plan.scan)
  return dataclasses.replace(
      cfg, model=m, mesh=dataclasses.replace(cfg.mesh, data=plan.data, fsdp=plan.fsdp,
                                             tensor=plan.tensor, slices=slices),
      train=dataclasses.replace(cfg.train, batch_size=plan.batch, grad_accum_steps=plan.accum))


def attentions(cfg: ExperimentConfig) -> tuple[str, ...]:
  """What attention can run on TPU for this model: with attention dropout only ``einsum``;
  otherwise the splash kernel and XLA's fused attention."""
  if cfg.model.attention_dropout > 0:
    return ("einsum",)
  return ("splash", "xla")


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _tensor_sizes(cfg: ExperimentConfig, chips: int) -> list[int]:
  m = cfg.model
  return [t for t in _divisors(chips) if t <= MAX_TENSOR and m.num_heads % t == 0
          and m.kv_heads % t == 0 and m.intermediate_size % t == 0 and m.hidden_size % t == 0]


def baseline(cfg: ExperimentConfig, chips: int, slices: int) -> Plan:
  """The configuration as given, as a plan (``-1`` resolved)."""
  sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
  if sizes.count(-1) == 1:
    sizes[sizes.index(-1)] = chips * slices // math.prod(s for s in sizes if s != -1)
  attention = cfg.model.attention_impl
  if attention == "auto":  # what auto runs on TPU
    attention = attentions(cfg)[0]
  return Plan(*sizes, cfg.model.remat, cfg.train.grad_accum_steps, attention,
              cfg.model.scan_layers, cfg.train.batch_size)


def enumerate_plans(cfg: ExperimentConfig, chips: int, slices: int, global_batch: int | None,
                    *, remats=REMATS, attention=None, max_per_chip: int = 1024) -> list[Plan]:
  """Every (mesh, remat, microbatch, attention) plan for ``slices`` slices of ``chips`` chips:
  for a fixed ``global_batch`` each accumulation that splits it evenly; for None each
  power-of-two microbatch per chip, without accumulation. All scanned (scan changes compile
  time, not the modelled step; the best plan's unrolled twin is compiled when time allows)."""
  out = []
  for tensor in _tensor_sizes(cfg, chips):
    for fsdp in _divisors(chips // tensor):
      data = chips // tensor // fsdp * slices
      shards = data * fsdp
      if global_batch is None:
        batches = [(s * shards, 1) for s in (2**i for i in range(11)) if s <= max_per_chip]
      else:
        batches = [(global_batch, a) for a in (2**i for i in range(11))
                   if global_batch % (a * shards) == 0]
      for remat in remats:
        for att in attention or attentions(cfg):
          out += [Plan(data, fsdp, tensor, remat, a, att, True, b) for b, a in batches]
  return out


@dataclasses.dataclass
class Calibration:
  """One remat policy and attention, compiled shallow: figures at one and two groups of layers
  for ``per_chip`` sequences per chip on the pure-FSDP mesh (per chip, per step)."""
  remat: str
  attention: str
  per_chip: int
  temp: tuple[float, float]
  flops: tuple[float, float]
  bytes: tuple[float, float]
  ici: tuple[float, float]
  dcn: tuple[float, float]
  kernels: bool  # Mosaic (splash) kernels, whose FLOPs XLA cannot see
  seconds: float
  error: str | None = None


def _shallow_figures(cfg: ExperimentConfig, devices: list, slices: int, groups: int) -> dict:
  """Compile ``cfg`` cut to ``groups`` groups of layers, unrolled, without windowed einsums (so
  XLA counts every FLOP), on its mesh; -> temp bytes, FLOPs, bytes, ICI/DCN traffic per chip."""
  from bertjax.train.planning import plan_engine

  small = aot.shallow(cfg, groups)
  mesh = aot.compile_mesh(small, devices, slices)
  with sharding.use_mesh(mesh, small.mesh.rules):
    shapes = batch_spec(small.data, batch_size=small.train.batch_size,
                        vocab_size=small.model.vocab_size,
                        sbo_max_targets=small.model.sbo_max_targets)
    engine, _ = plan_engine(small, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
    state = engine.abstract_state()
    compiled = engine.train_step.lower(state, engine.abstract_batch(shapes)).compile(
        compiler_options=aot.COST_COMPILER_OPTIONS)
  flops, accessed = aot._costs(compiled)
  hlo = compiled.as_text() or ""
  found = read_collectives(hlo, list(mesh.devices.flat))
  return {"temp": float(compiled.memory_analysis().temp_size_in_bytes), "flops": flops,
          "bytes": accessed, "kernels": 'custom_call_target="tpu_custom_call"' in hlo,
          "ici": sum(c.traffic * c.count for c in found if not c.crosses_slices),
          "dcn": sum(c.traffic * c.count for c in found if c.crosses_slices)}


def calibrate(cfg: ExperimentConfig, devices: list, slices: int, remat: str, attention: str,
              per_chip: int) -> Calibration:
  """The shallow compiles of one policy, on a mesh with data over the slices and fsdp over
  each slice's chips, ``per_chip`` sequences per chip, no accumulation."""
  n = len(devices)
  began = time.perf_counter()
  probe = apply(cfg, Plan(slices, n // slices, 1, remat, 1, attention, False, per_chip * n),
                slices)
  try:
    one, two = (_shallow_figures(probe, devices, slices, g) for g in (1, 2))
  except Exception as e:  # noqa: BLE001 -- over HBM, or a combination XLA/Pallas rejects
    first = (str(e).splitlines() or [type(e).__name__])[0][:160]
    zero = (0.0, 0.0)
    return Calibration(remat, attention, per_chip, zero, zero, zero, zero, zero, False,
                       time.perf_counter() - began, error=first)
  pair = lambda k: (one[k], two[k])
  return Calibration(remat, attention, per_chip, pair("temp"), pair("flops"), pair("bytes"),
                     pair("ici"), pair("dcn"), one["kernels"] or two["kernels"],
                     time.perf_counter() - began)


@dataclasses.dataclass
class Estimate:
  """A plan's predicted (or, once ``compiled``, measured) figures, per chip."""
  plan: Plan
  state_bytes: float
  total_bytes: float
  fits: bool
  compute_seconds: float
  hbm_seconds: float
  ici_seconds: float
  dcn_seconds: float
  mfu_range: tuple[float, float] | None = None
  compiled: dict | None = None  # the compile report
  predicted_bytes: float | None = None  # the cheap model's memory, kept beside the real one

  @property
  def step_range(self) -> tuple[float, float]:
    roof = max(self.compute_seconds, self.hbm_seconds)
    return (max(roof, self.ici_seconds, self.dcn_seconds),
            roof + self.ici_seconds + self.dcn_seconds)

  def rank_key(self) -> tuple:
    """Fits first; then the upper end of the step time, its lower end (both to 3 significant
    digits: the estimate is no finer), less memory per chip, scanned."""
    low, high = (float(f"{t:.3g}") for t in self.step_range)
    return (not self.fits, high, low, self.total_bytes, not self.plan.scan)


# HBM bytes of one optimizer update per byte of state: Adam reads the parameter, gradient and
# both moments and writes three back (28 bytes per 12 of f32 state); once per step
OPTIMIZER_PASSES = 28 / 12


class CostModel:
  """The cheap model: calibrations + exact state bytes -> an ``Estimate`` for any plan.

  A calibration ran on ``ref``, the pure-FSDP mesh, at ``per_chip`` sequences per chip. Its temp
  memory less one f32 gradient shard (the state's parameters on that mesh) is activations:
  scaled by sequences per chip, its per-group part divided over tensor, plus the plan's own
  gradient shard. Its HBM bytes less the optimizer update's are scaled by sequences per step,
  plus the plan's own update. ``correction``: per policy, the factor that makes the predicted
  temp memory of that policy's latest full-depth compile its real one (``learn``)."""

  def __init__(self, cfg: ExperimentConfig, spec, chips: int, slices: int,
               calibrations: dict[tuple[str, str], Calibration], state_bytes: dict):
    self.cfg, self.spec, self.chips, self.slices = cfg, spec, chips, slices
    self.calibrations, self.state_bytes = calibrations, state_bytes
    self.groups = aot.depth_groups(cfg)[2]
    self.tokens_per_seq = cfg.data.max_seq_length
    self.model_flops_per_seq = step_flops_per_token(cfg) * cfg.data.max_seq_length
    self.ref = (slices, chips, 1)
    self.correction: dict[tuple[str, str], float] = {}

  def estimate(self, plan: Plan) -> Estimate | None:
    cal = self.calibrations.get((plan.remat, plan.attention))
    if cal is None or cal.error or self.ref not in self.state_bytes:
      return None
    n, g, spec = self.chips * self.slices, self.groups, self.spec
    step_seqs = plan.batch / n  # sequences per chip per step (tensor splits the work)
    scale = plan.per_chip / cal.per_chip  # one microbatch's sequences on one chip
    ref_params = self.state_bytes[self.ref][1]
    state, params = self.state_bytes[plan.mesh]
    t1, t2 = cal.temp
    layer = t2 - t1
    activations = max(0.0, (t1 - layer) + g * layer / plan.tensor - ref_params) * scale
    temp = (activations + params) * self.correction.get((plan.remat, plan.attention), 1.0)
    flops, accessed = self.xla_costs(plan, cal)
    if cal.kernels:
      flops += 3.0 * kernel_attention_flops_per_token(
          self.cfg.model, self.tokens_per_seq) * self.tokens_per_seq * step_seqs
    ici, dcn = self._traffic(plan, cal)
    low_bw = spec.ici_bandwidth / 2 if spec.ici_bandwidth else None
    ici_s = ici / low_bw if low_bw else 0.0
    dcn_s = dcn / spec.dcn_bandwidth if dcn and spec.dcn_bandwidth else 0.0
    e = Estimate(plan, state, state + temp, state + temp <= spec.hbm_bytes,
                 flops / spec.peak_flops, accessed / spec.hbm_bandwidth, ici_s, dcn_s)
    e.mfu_range = self.mfu(e.step_range, plan)
    return e

  def xla_costs(self, plan: Plan, cal: Calibration) -> tuple[float, float]:
    """(FLOPs, HBM bytes) per chip per step as XLA counts them (splash kernels' FLOPs not
    included): the calibration's, extended to the depth; bytes less the calibration mesh's
    optimizer update, scaled by sequences per step, plus the plan's own update."""
    g, step_seqs = self.groups, plan.batch / (self.chips * self.slices)
    ref_state, state = self.state_bytes[self.ref][0], self.state_bytes[plan.mesh][0]
    flops = aot.extend(*cal.flops, g) * step_seqs / cal.per_chip
    accessed = (max(0.0, aot.extend(*cal.bytes, g) - OPTIMIZER_PASSES * ref_state)
                * step_seqs / cal.per_chip + OPTIMIZER_PASSES * state)
    return flops, accessed

  def learn(self, predicted: Estimate, real_total: float) -> None:
    """A compiled plan's real memory corrects its policy's predictions from now on."""
    key = (predicted.plan.remat, predicted.plan.attention)
    was = predicted.total_bytes - predicted.state_bytes  # temp, with the old correction
    if was > 0 and math.isfinite(real_total):
      self.correction[key] = self.correction.get(key, 1.0) * (
          (real_total - predicted.state_bytes) / was)

  def mfu(self, step_range, plan: Plan) -> tuple[float, float]:
    per_chip = self.model_flops_per_seq * plan.batch / (self.chips * self.slices)
    low, high = step_range
    return per_chip / self.spec.peak_flops / high, per_chip / self.spec.peak_flops / low

  def _traffic(self, plan: Plan, cal: Calibration) -> tuple[float, float]:
    """Per-chip ICI and DCN bytes per step. FSDP: the calibration's gathers and
    reduce-scatters (all its in-slice traffic), rescaled from its ring to this plan's and
    divided over tensor; data: a ring all-reduce of the gradient shard; tensor: two
    all-reduces of the microbatch's activations per layer forward, two backward, two more
    when remat recomputes the forward pass. All once per microbatch."""
    inside = self.chips  # the calibration's fsdp ring
    data_in = plan.data // self.slices
    fsdp_ref = aot.extend(*cal.ici, self.groups)
    ici = 0.0
    if plan.fsdp > 1 and inside > 1:
      ici += fsdp_ref * ((plan.fsdp - 1) / plan.fsdp) / ((inside - 1) / inside) / plan.tensor
    grads = self.state_bytes[plan.mesh][1]  # the gradient shard: the parameters' bytes
    if data_in > 1:
      ici += 2.0 * grads * (data_in - 1) / data_in
    if plan.tensor > 1:
      m = self.cfg.model
      width = 2 if m.dtype == "bfloat16" else 4
      act = plan.per_chip * self.tokens_per_seq * m.hidden_size * width
      per_layer = 4 + (2 if plan.remat != "none" else 0)
      ici += per_layer * m.num_layers * 2.0 * act * (plan.tensor - 1) / plan.tensor
    dcn = aot.extend(*cal.dcn, self.groups)  # the slices' gradient all-reduce: same per chip
    return ici * plan.accum, dcn * plan.accum


def _state_bytes(cfg: ExperimentConfig, devices: list, slices: int, meshes) -> dict:
  """Per chip for each mesh: (parameters + optimizer state (+ a teacher), parameters), exact,
  from the abstract train state's shardings."""
  from bertjax.train.planning import plan_engine

  out: dict = {}
  for data, fsdp, tensor in meshes:
    c = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, fsdp=fsdp,
                                                          tensor=tensor, slices=slices),
                            train=dataclasses.replace(cfg.train, batch_size=data * fsdp,
                                                      grad_accum_steps=1))
    try:
      mesh = aot.compile_mesh(c, devices, slices)
    except UserError:  # an axis the torus cannot lay out
      continue
    with sharding.use_mesh(mesh, c.mesh.rules):
      shapes = batch_spec(c.data, batch_size=data * fsdp, vocab_size=c.model.vocab_size,
                          sbo_max_targets=c.model.sbo_max_targets)
      engine, _ = plan_engine(c, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
      state = engine.abstract_state()
    params = aot._per_device_bytes(state.params)
    total = params + aot._per_device_bytes(state.opt_state) + (
        aot._per_device_bytes(state.frozen) if state.frozen is not None else 0)
    out[(data, fsdp, tensor)] = (total, params)
  return out


def _calibration_batch(cfg: ExperimentConfig, chips: int, global_batch: int | None) -> int:
  """Sequences per chip for the calibration: the plan's own at one microbatch per step (so the
  plans most like the given one are predicted at their own size)."""
  return max(1, (global_batch or cfg.train.batch_size) // chips)


def _ranked(model: CostModel, plans: list[Plan], maximise: bool, ranking) -> list[Estimate]:
  """Every plan the model can estimate, best first; ``maximise``: per mesh, remat and
  attention only the largest microbatch predicted to fit."""
  modelled = [e for e in (model.estimate(p) for p in plans) if e is not None]
  if maximise:
    best: dict = {}
    for e in modelled:
      key = (e.plan.mesh, e.plan.remat, e.plan.attention)
      if e.fits and (key not in best or e.plan.batch > best[key].plan.batch):
        best[key] = e
    modelled = list(best.values())
  return sorted(modelled, key=ranking)


def search(cfg: ExperimentConfig, topology: str, *, slices: int = 1,
           global_batch: int | None | str = None, vocab_size: int | None = None,
           budget_seconds: float = 1200.0, top: int = 4, remats=REMATS,
           log=print) -> dict[str, Any]:
  """The whole search; -> a report: the compiled plans ranked, the baseline, the best plan's
  overrides, the modelled plans, the calibrations and the time spent."""
  began = time.perf_counter()
  left = lambda: budget_seconds - (time.perf_counter() - began)
  if cfg.objective == "distill":  # the student is built from the teacher, not from model.*
    raise UserError("bertjax plan: objective=distill builds its student from the teacher's "
                    "config, so model.remat, attention_impl and scan_layers do not reach it; "
                    "plan the student's shape with objective=mlm instead")
  cfg, vocab_from = aot.prepare(cfg, vocab_size)
  if aot.depth_groups(cfg) is None:
    raise UserError(f"bertjax plan: {cfg.name} has no repeated layers to calibrate on")
  devices = aot.topology_devices(topology, slices)
  spec = chip(devices[0])
  if spec is None or not spec.ici_bandwidth:
    raise UserError(f"bertjax plan: --topology {topology}: no published ICI bandwidth for "
                    f"{devices[0].device_kind}; plan for v5e, v5p or v6e")
  n = len(devices)
  chips = n // slices
  maximise = global_batch == "max"
  fixed = None if maximise else int(global_batch or cfg.train.batch_size)
  base = baseline(cfg, chips, slices)
  if fixed is not None and fixed != base.batch:
    base = dataclasses.replace(base, batch=fixed)
  try:
    aot.compile_mesh(apply(cfg, base, slices), devices, slices)
  except (ConfigError, UserError) as e:
    log(f"the configuration as given does not run here ({e}); no baseline")
    base = None
  if base and base.remat not in remats and base.remat in REMATS:  # the given one is searched
    remats = (*remats, base.remat)
  plans = enumerate_plans(cfg, chips, slices, fixed, remats=remats)
  # stage 1: exact state bytes per mesh (no compile); meshes the torus cannot lay out go
  state = _state_bytes(cfg, devices, slices, sorted(
      {p.mesh for p in plans} | {(slices, chips, 1)} | ({base.mesh} if base else set())))
  plans = [p for p in plans if p.mesh in state]
  log(f"{len(plans)} plans over {len({p.mesh for p in plans})} meshes x "
      f"{len(remats)} remat policies x {len(attentions(cfg))} attention; "
      f"budget {budget_seconds / 60:.0f} min")
  # stage 2: calibrations -- the baseline's policy first, each remat with the first attention,
  # the other attentions with the baseline's remat (their effects taken as additive)
  per_chip = _calibration_batch(cfg, n, fixed)
  atts = attentions(cfg)
  first_remat = base.remat if base and base.remat in REMATS else remats[0]
  first_att = base.attention if base and base.attention in atts else atts[0]
  order = [(first_remat, first_att)] + [(r, first_att) for r in remats if r != first_remat]
  order += [(first_remat, a) for a in atts if a != first_att]
  cals: dict[tuple[str, str], Calibration] = {}
  last = 0.0
  for remat, att in order:
    if last and left() < 4 * last:  # keep room for the compiles that decide
      log(f"calibrate {remat}/{att}: skipped, out of budget")
      continue
    size = per_chip
    while True:  # over HBM even shallow: halve the sequences per chip
      cal = calibrate(cfg, devices, slices, remat, att, size)
      if not (cal.error and "RESOURCE_EXHAUSTED" in cal.error and size > 1):
        break
      size //= 2
    last = cal.seconds
    cals[(remat, att)] = cal
    log(f"calibrate remat={remat} attention={att} at {size} seq/chip: "
        + (f"failed: {cal.error}" if cal.error else
           f"temp {cal.temp[0] / GiB:.2f}->{cal.temp[1] / GiB:.2f} GiB for 1->2 groups")
        + f" ({cal.seconds:.0f} s)")
  for remat in remats:  # the other attentions, from the baseline remat's difference
    for att in atts:
      if (remat, att) in cals or (first_remat, att) not in cals or (remat, first_att) not in cals:
        continue
      a, b, c = cals[(remat, first_att)], cals[(first_remat, att)], cals[(first_remat, first_att)]
      if a.error or b.error or c.error or len({a.per_chip, b.per_chip, c.per_chip}) > 1:
        continue
      mixed = {k: tuple(x + y - z for x, y, z in zip(getattr(a, k), getattr(b, k), getattr(c, k)))
               for k in ("temp", "flops", "bytes", "ici", "dcn")}
      cals[(remat, att)] = Calibration(remat, att, a.per_chip, **mixed, kernels=b.kernels,
                                       seconds=0.0)
  model = CostModel(cfg, spec, chips, slices, cals, state)
  speed = lambda e: _tokens_per_chip(e, cfg, n)
  ranking = (lambda e: (not e.fits, -speed(e))) if maximise else Estimate.rank_key

  # stage 3: full-depth compiles. Shallow programs under no memory pressure keep more than the
  # deep one XLA has to fit (its rematerialization and scheduling change), so memory is what
  # the cheap model knows least: the first compile of each policy (the baseline's, then the
  # fastest plan of each other policy that might fit) corrects that policy's predictions
  # (CostModel.learn); then the best plans predicted to fit, re-ranked after every compile.
  compiled: list[Estimate] = []
  seen, per_compile = set(), 0.0
  wanted = top if top < 2 else top - 1  # from 2 on, the last place is the leader's unrolled twin

  def pick() -> Plan | None:
    if base and base not in seen:
      return base
    every = [e for e in (model.estimate(p) for p in plans) if e is not None and e.plan not in seen]
    unknown = [e for e in every if (e.plan.remat, e.plan.attention) not in model.correction
               and e.total_bytes <= UNCERTAIN * spec.hbm_bytes]
    if unknown:
      return min(unknown, key=lambda e: ranking(e)[1:]).plan  # as ranked, fits or not
    fresh = [e.plan for e in _ranked(model, plans, maximise, ranking)
             if e.fits and e.plan not in seen]
    return fresh[0] if fresh else None

  for _ in range(3 * (wanted + 1) + len(cals)):  # plans that do not fit count up to a point
    if sum(e.fits and e.plan != base for e in compiled) >= wanted:
      break
    plan = pick()
    if plan is None:
      break
    if per_compile and left() < 1.2 * per_compile:
      log(f"compile {plan.label()}: skipped, out of budget")
      break
    seen.add(plan)
    compiled.append(_compile(cfg, plan, topology, slices, model, log))
    per_compile = max(per_compile, compiled[-1].compiled["seconds"])
  # scan: the leader unrolled, when its (longer) compile fits the budget
  fitting = sorted((e for e in compiled if e.fits), key=ranking)
  if fitting:
    twin = dataclasses.replace(fitting[0].plan, scan=False)
    if top >= 2 and twin not in seen and left() > 3 * per_compile:
      compiled.append(_compile(cfg, twin, topology, slices, model, log))
  modelled = _ranked(model, plans, maximise, ranking)
  compiled.sort(key=ranking)
  winner = next((e for e in compiled if e.fits), None)
  return {
      "experiment": cfg.name, "topology": topology, "slices": slices, "chips": n,
      "chip": spec.name, "hbm_bytes": spec.hbm_bytes, "vocab": vocab_from,
      "seq_len": cfg.data.max_seq_length,
      "global_batch": "max" if maximise else fixed,
      "plans_modelled": len(modelled), "plans_predicted_to_fit": sum(e.fits for e in modelled),
      "calibrations": [dataclasses.asdict(c) for c in cals.values() if c.seconds],
      "memory_corrections": {f"{r}/{a}": v for (r, a), v in model.correction.items()},
      "compiled": [_row(e, cfg, n, e.plan == base) for e in compiled],
      "modelled_top": [_row(e, cfg, n, e.plan == base) for e in modelled[:10]],
      "best": _row(winner, cfg, n, winner.plan == base) if winner else None,
      "baseline": next((_row(e, cfg, n, True) for e in compiled if e.plan == base), None),
      "ranked_by": ("tokens/s per chip at the step time's upper end" if maximise else
                    "the step time's upper end (no overlap), its lower end, memory"),
      "estimate_limits": LIMITS, "seconds": round(time.perf_counter() - began, 1),
  }


def _tokens_per_chip(e: Estimate, cfg: ExperimentConfig, n: int) -> float:
  return e.plan.batch * cfg.data.max_seq_length / n / e.step_range[1]


def _compile(cfg: ExperimentConfig, plan: Plan, topology: str, slices: int, model: CostModel,
             log) -> Estimate:
  """The plan at full depth: its real memory and collectives; FLOPs and HBM bytes from the
  calibration (``CostModel``), which is what every compiled plan of a policy shares."""
  predicted = model.estimate(plan)
  c = apply(cfg, plan, slices)
  began = time.perf_counter()
  try:
    if predicted is None:
      raise UserError(f"no calibration for remat={plan.remat} attention={plan.attention}")
    # XLA's counts: compile_pretraining adds the splash kernels' FLOPs itself
    costs = model.xla_costs(plan, model.calibrations[(plan.remat, plan.attention)])
    r = aot.compile_pretraining(c, topology, slices=slices, vocab_size=c.model.vocab_size,
                                costs=(costs, "the plan's calibration"), eval_step=False)
  except (ConfigError, UserError) as e:
    log(f"compile {plan.label()}: {e}")
    return Estimate(plan, 0.0, float("nan"), False, math.inf, math.inf, math.inf, math.inf,
                    compiled={"error": str(e), "seconds": time.perf_counter() - began})
  per = r["per_device"]
  state = per["params_bytes"] + per["optimizer_bytes"] + per["frozen_bytes"]
  e = Estimate(plan, state, per["total_bytes"], r["fits"], r.get("compute_seconds", math.inf),
               r.get("hbm_seconds", math.inf), r.get("ici_seconds", 0.0),
               r.get("dcn_seconds", 0.0), compiled=dict(r, seconds=r["compile_seconds"]),
               predicted_bytes=predicted.total_bytes if predicted else None)
  e.mfu_range = model.mfu(e.step_range, plan) if e.fits else None
  model.learn(predicted, per["total_bytes"])
  low, high = e.step_range
  log(f"compile {plan.label()}: {per['total_bytes'] / GiB:.2f} GiB per chip "
      f"(model {predicted.total_bytes / GiB:.2f}), "
      + (f"step {low * 1e3:.0f}-{high * 1e3:.0f} ms" if e.fits else "DOES NOT FIT")
      + f" ({r['compile_seconds']:.0f} s)")
  return e


def _row(e: Estimate, cfg: ExperimentConfig, n: int, is_baseline: bool) -> dict:
  low, high = e.step_range
  ok = e.fits and math.isfinite(high)
  return {
      "plan": e.plan.label(), "overrides": e.plan.overrides(), "baseline": is_baseline,
      "fits": e.fits, "compiled": e.compiled is not None,
      "total_bytes": e.total_bytes, "predicted_bytes": e.predicted_bytes,
      "state_bytes": e.state_bytes,
      "step_seconds_range": [low, high] if ok else None,
      "mfu_range": list(e.mfu_range) if ok and e.mfu_range else None,
      "tokens_per_second_per_chip": ([e.plan.batch * cfg.data.max_seq_length / n / t
                                      for t in (high, low)] if ok else None),
      "compute_seconds": e.compute_seconds, "hbm_seconds": e.hbm_seconds,
      "ici_seconds": e.ici_seconds, "dcn_seconds": e.dcn_seconds,
      "compile_seconds": e.compiled.get("seconds") if e.compiled else None,
      "error": e.compiled.get("error") if e.compiled else None,
  }


def format_plan(r: dict) -> str:
  g = lambda b: "-" if b is None or math.isnan(b) else f"{b / GiB:5.2f}"
  ms = lambda x: "-" if not x else f"{x[0] * 1e3:.4g}-{x[1] * 1e3:.4g}"
  pct = lambda x: "-" if not x else f"{x[0]:.0%}-{x[1]:.0%}"
  tok = lambda x: "-" if not x else f"{x[0]:,.0f}-{x[1]:,.0f}"
  batch = r["global_batch"]
  lines = [(f"{r['experiment']}: {r['slices']} x {r['topology']} = {r['chips']} {r['chip']} "
            f"chips ({r['hbm_bytes'] / GiB:.1f} GiB HBM each), seq {r['seq_len']}, global batch "
            f"{'the largest that fits' if batch == 'max' else batch}; vocab from {r['vocab']}"),
           (f"  {r['plans_modelled']} plans modelled, {r['plans_predicted_to_fit']} predicted to "
            f"fit; compiled at full depth (ranked by {r['ranked_by']}):"),
           ("  #  plan (data/fsdp/tensor remat microbatch x accum attention)   fits  GiB/chip "
            "(model)  step ms      MFU       tokens/s/chip   compile")]
  for i, row in enumerate(r["compiled"], 1):
    lines.append(
        f"  {i:<2} {row['plan'] + (' [given]' if row['baseline'] else ''):58} "
        f"{'yes' if row['fits'] else 'NO ':4} {g(row['total_bytes'])}  "
        f"({g(row['predicted_bytes'])})"
        f"  {ms(row['step_seconds_range']):11} {pct(row['mfu_range']):9} "
        f"{tok(row['tokens_per_second_per_chip']):15} "
        + (f"{row['compile_seconds']:.0f} s" if row["compile_seconds"] else "-")
        + (f"  {row['error'][:80]}" if row["error"] else ""))
  best, base = r["best"], r["baseline"]
  if best:
    lines.append(f"  best: {' '.join(best['overrides'])}")
    if base and base["step_seconds_range"] and batch == "max":  # batches differ: throughput
      ratio = best["tokens_per_second_per_chip"][0] / base["tokens_per_second_per_chip"][0]
      lines.append(f"  vs the configuration as given: tokens/s per chip x{ratio:.2f} "
                   f"({tok(best['tokens_per_second_per_chip'])} vs "
                   f"{tok(base['tokens_per_second_per_chip'])})")
    elif base and base["step_seconds_range"]:
      ratio = best["step_seconds_range"][1] / base["step_seconds_range"][1]
      lines.append(f"  vs the configuration as given: step upper end x{ratio:.2f} "
                   f"({ms(best['step_seconds_range'])} ms vs {ms(base['step_seconds_range'])} "
                   "ms)")
  else:
    lines.append("  no compiled plan fits")
  lines.append(f"  not modelled: {r['estimate_limits'].split('; it does not model ')[-1]}")
  lines.append(f"  searched in {r['seconds']:.0f} s")
  return "\n".join(lines)


def write_plan(report: dict, preset: str | None, overrides: list[str], path: str | Path) -> Path:
  """The best plan as an experiment YAML ``bertjax pretrain`` takes: the preset (or YAML) with
  the user's overrides and the plan's applied."""
  best = report["best"]
  if best is None:
    raise UserError("bertjax plan: no compiled plan fits; nothing to --write")
  data = load_yaml(find_preset(preset or "bert-demo", "experiments"))
  for text in [*overrides, *best["overrides"]]:
    merge_into(data, *parse_override(text))
  path = Path(path)
  low, high = best["step_seconds_range"]
  head = (f"# bertjax plan {preset or ''} --topology {report['topology']} --slices "
          f"{report['slices']}: {best['plan']}\n# estimated step {low * 1e3:.0f}-{high * 1e3:.0f}"
          f" ms, {best['total_bytes'] / GiB:.2f} GiB per chip of {report['hbm_bytes'] / GiB:.1f}\n")
  path.write_text(head + yaml.safe_dump(data, sort_keys=False))
  return path
