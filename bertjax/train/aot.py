"""``bertjax compile``: the pretraining step compiled ahead of time for a Cloud TPU topology,
from any machine -- no TPU, no data.

With ``libtpu`` installed (``pip install 'bertjax[tpu]'``) a CPU-only process can describe a
TPU slice (``jax.experimental.topologies``) and compile real programs for its compile-only
devices. This module builds exactly the engine ``bertjax pretrain`` would (``planning
.plan_engine``: same objective, batch inputs, gradient accumulation, mesh and rules) over such
devices, lowers the train and eval steps on abstract inputs and reads what XLA decided: memory
per device, FLOPs, bytes accessed, and every collective with its ICI/DCN traffic
(``collectives.py``), which widens the roofline into a step-time range. Nothing is allocated
or executed on any device.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bertjax import sharding
from bertjax.config import ConfigError, ExperimentConfig
from bertjax.data.pipeline import batch_spec
from bertjax.errors import UserError
from bertjax.train.collectives import LIMITS, link_seconds, read_collectives, summarize
from bertjax.train.flops import chip, kernel_attention_flops_per_token, step_flops_per_token

GiB = 2.0**30

# Cloud TPU names -> (topology prefix, chip config, TensorCores counted per chip in the name).
# v4 and v5p names count TensorCores (2 per chip, one megacore device each); v5e/v6e count chips.
_GENERATIONS = {
    "v4": ("v4", "megacore_dense", 2),
    "v5p": ("v5", "megacore", 2),
    "v5e": ("v5e", None, 1),
    "v5litepod": ("v5e", None, 1),
    "v6e": ("v6e", None, 1),
}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


def parse_topology(name: str) -> tuple[str, str | None]:
  """A Cloud TPU name (``v4-32``, ``v5p-128``, ``v5litepod-16`` / ``v5e-16``, ``v6e-64``) or a
  topology (``v5e:4x4``, ``v5p:2x2x1``) -> (topology name, chip config name)."""
  if ":" in name:
    gen, shape = name.split(":", 1)
    gen = {"v5p": "v5", "v5litepod": "v5e"}.get(gen, gen)
    config = {"v4": "megacore_dense", "v5": "megacore"}.get(gen)
    if gen not in ("v4", "v5", "v5e", "v6e") or not re.fullmatch(r"\d+(x\d+)+", shape):
      raise UserError(f"--topology {name}: use a Cloud TPU name (v5e-16, v5p-128, v4-32, "
                      "v6e-64) or GEN:SHAPE (v5e:4x4, v5p:2x2x1)")
    return f"{gen}:{shape}", config
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
  if not m:
    raise UserError(f"--topology {name}: use a Cloud TPU name (v5e-16, v5p-128, v4-32, v6e-64) "
                    "or GEN:SHAPE (v5e:4x4, v5p:2x2x1)")
  prefix, config, per_chip = _GENERATIONS[m.group(1)]
  cores = int(m.group(2))
  chips, shapes = cores // per_chip, (_SHAPES_3D if per_chip == 2 else _SHAPES_2D)
  if cores % per_chip or chips not in shapes:
    raise UserError(f"--topology {name}: no such slice; sizes are "
                    f"{', '.join(f'{m.group(1)}-{c * per_chip}' for c in shapes)}")
  return f"{prefix}:{shapes[chips]}", config


def topology_devices(name: str, slices: int = 1) -> list:
  """Compile-only TPU devices of ``slices`` slices of topology ``name`` (needs libtpu)."""
  topology, config = parse_topology(name)
  if slices < 1:
    raise UserError(f"--slices must be >= 1, got {slices}")
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("compiling for TPU needs libtpu: pip install 'bertjax[tpu]'")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no exclusive lock
  # read once, when libtpu loads; without them it logs warnings about a VM it is not on
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", name if "-" in name else "v5litepod-4")
  from jax.experimental import topologies

  kw = {"chip_config_name": config} if config else {}
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                        num_slices=slices, **kw)
  except Exception as e:  # a shape libtpu rejects
    raise UserError(f"--topology {name} ({topology}): "
                    f"{(str(e).splitlines() or [''])[0][:200]}") from None
  return list(desc.devices)


def compile_mesh(cfg: ExperimentConfig, devices: list, slices: int) -> jax.sharding.Mesh:
  """``mesh.*`` over the topology's devices; with ``slices`` > 1 the data axis spans them
  (``mesh.slices``), fsdp and tensor stay inside each slice."""
  from bertjax.train.run import plan_mesh

  if cfg.mesh.slices not in (1, slices):
    raise ConfigError(f"mesh.slices={cfg.mesh.slices} but --slices {slices}")
  return plan_mesh(dataclasses.replace(cfg.mesh, slices=slices), devices,
                   train_batch_size=cfg.train.batch_size)


def _resolve_vocab(cfg: ExperimentConfig) -> tuple[ExperimentConfig, str]:
  """The tokenizer folder decides the vocabulary when it can be read, else ``model.*``."""
  from bertjax.data.corpus import load_tokenizer
  from bertjax.train.planning import resolve_model

  try:
    tokenizer = load_tokenizer(cfg.data)
  except Exception:  # noqa: BLE001 -- any unreadable tokenizer: the config's vocabulary
    return cfg, f"model.vocab_size={cfg.model.vocab_size}"
  return resolve_model(cfg, tokenizer), f"{cfg.data.tokenizer} ({tokenizer.vocab_size} ids)"


def _per_device_bytes(abstract) -> int:
  total = 0
  for a in jax.tree.leaves(abstract):
    shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
    total += math.prod(shape) * np.dtype(a.dtype).itemsize
  return total


def _oom_need(message: str) -> tuple[float, float] | None:
  unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  m = re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", message)
  if not m:
    return None
  return float(m.group(1)) * unit[m.group(2)], float(m.group(3)) * unit[m.group(4)]


# XLA:TPU turns large fsdp matmuls into windowed einsums (collective matmuls: a while loop of
# partial matmuls overlapped with the all-gather / reduce-scatter), and its cost analysis counts
# a loop body once -- EuroBERT-2.1B on fsdp 32 lost 0.39 of every layer's FLOPs to it. The FLOP
# count therefore comes from a compile without them (same math, no overlap loops).
COST_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
                         "xla_tpu_enable_windowed_einsum_for_all_gather": False}
WINDOWED_EINSUM = "windowed_dot_general"  # in the names of those loops' bodies


def _costs(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) per device of a compiled program (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def depth_groups(cfg: ExperimentConfig) -> tuple[int, int, float] | None:
  """How ``cfg``'s layers scan: (single layers before the first scanned run, layers per group,
  groups in the whole model); None when nothing scans."""
  from bertjax.nn.encoder import plan_segments

  m = cfg.model
  scanned = [seg for seg in plan_segments(m, scan=True) if seg.groups > 1]
  if not scanned:
    return None
  lead, period = scanned[0].start, scanned[0].period  # single layers before the first scan
  return lead, period, (len(m.block_schedule()) - lead) / period


def shallow(cfg: ExperimentConfig, num_groups: int) -> ExperimentConfig:
  """``cfg`` cut to its leading single layers and ``num_groups`` groups, unrolled."""
  lead, period, _ = depth_groups(cfg)
  m, layers = cfg.model, lead + num_groups * period
  return dataclasses.replace(cfg, model=dataclasses.replace(
      m, num_layers=layers, scan_layers=False, num_hidden_groups=min(m.num_hidden_groups, layers)))


def extend(one: float, two: float, groups: float) -> float:
  """A figure of the whole depth from the same figure at one and at two groups of layers."""
  return one + (groups - 1) * (two - one)


def _extrapolated_costs(cfg: ExperimentConfig, shapes: dict) -> tuple[float, float] | None:
  """The costs of ``cfg``'s step with its layers unrolled, without compiling them all: XLA
  counts a scanned loop body once, so compile the same step unrolled with one and with two
  groups of layers (ModernBERT: a global/local period; any leading single layer kept) and
  extend the per-group difference linearly to the real depth. Call under the mesh."""
  from bertjax.train.planning import plan_engine

  depth = depth_groups(cfg)
  if depth is None:
    return None

  def at(num_groups: int) -> tuple[float, float]:
    engine, _ = plan_engine(shallow(cfg, num_groups),
                            {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
    state = engine.abstract_state()
    return _costs(engine.train_step.lower(state, engine.abstract_batch(shapes)).compile(
        compiler_options=COST_COMPILER_OPTIONS))

  one, two = at(1), at(2)
  return tuple(extend(a, b, depth[2]) for a, b in zip(one, two))


def prepare(cfg: ExperimentConfig, vocab_size: int | None) -> tuple[ExperimentConfig, str]:
  """``cfg`` as ``pretrain`` would build it (a distillation student, the tokenizer's vocabulary
  or ``vocab_size``), its objective checked; -> (config, where the vocabulary came from)."""
  from bertjax.objectives import check_objective
  from bertjax.train.planning import distillation_config

  if cfg.objective == "distill":
    cfg = distillation_config(cfg)
  if vocab_size:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    vocab_from = f"--vocab-size {vocab_size}"
  else:
    cfg, vocab_from = _resolve_vocab(cfg)
  check_objective(cfg)
  return cfg, vocab_from


def compile_pretraining(cfg: ExperimentConfig, topology: str, *, slices: int = 1,
                        save: str | Path | None = None, vocab_size: int | None = None,
                        unrolled_costs: bool = True, costs: tuple[tuple[float, float], str]
                        | None = None, eval_step: bool = True) -> dict[str, Any]:
  """Compile ``cfg``'s train and eval steps for ``slices`` x ``topology``; -> the report.
  ``vocab_size``: use it instead of the tokenizer's (a production vocabulary you don't have
  here). ``unrolled_costs`` False: skip the two extra compiles that give a scanned step's FLOPs
  (the report then has memory only). ``costs``: ((FLOPs, bytes accessed) per device, where they
  come from) known already (``bertjax plan``'s calibration), instead of those compiles.
  ``eval_step`` False: the train step only."""
  from bertjax.train.planning import plan_engine

  cfg, vocab_from = prepare(cfg, vocab_size)
  devices = topology_devices(topology, slices)
  spec = chip(devices[0])
  mesh = compile_mesh(cfg, devices, slices)
  with sharding.use_mesh(mesh, cfg.mesh.rules):
    shapes = batch_spec(cfg.data, batch_size=cfg.train.batch_size,
                        vocab_size=cfg.model.vocab_size,
                        sbo_max_targets=cfg.model.sbo_max_targets)
    engine, _ = plan_engine(cfg, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
    batch = engine.abstract_batch(shapes)
    state = engine.abstract_state()
    began = time.perf_counter()
    oom = None
    try:
      compiled = engine.train_step.lower(state, batch).compile()
    except Exception as e:  # XLA refuses a program over the chip's HBM
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      compiled, oom = None, _oom_need(str(e)) or (float("nan"), spec.hbm_bytes)
    compile_seconds = time.perf_counter() - began
    eval_compiled = None
    if compiled is not None and eval_step:
      eval_compiled = engine.eval_step.lower(state.params, batch, state.frozen).compile()
    if compiled is not None and costs is not None:
      costs, basis = costs
    elif compiled is not None:
      costs, basis = _costs(compiled), "the compiled step"
      unrolled = (_extrapolated_costs(cfg, shapes) if cfg.model.scan_layers and unrolled_costs
                  else None)
      if unrolled is not None:  # XLA's cost analysis counts a while-loop body once
        costs, basis = unrolled, ("unrolled 1- and 2-group compiles without windowed einsums, "
                                  "extrapolated")
      elif cfg.model.scan_layers and not unrolled_costs:
        costs, basis = None, None
      elif WINDOWED_EINSUM in (compiled.as_text() or ""):
        costs = _costs(engine.train_step.lower(state, batch).compile(
            compiler_options=COST_COMPILER_OPTIONS))
        basis = "the step compiled again without windowed einsums (XLA counts their loops once)"

  tokens = cfg.train.batch_size * cfg.data.max_seq_length
  teacher = None
  if cfg.objective == "distill":
    from bertjax.model_dir import read_model_config

    teacher = read_model_config(cfg.distill.teacher)
  analytic = tokens * step_flops_per_token(cfg, teacher)  # model FLOPs of the whole step
  n = len(devices)
  report: dict[str, Any] = {
      "experiment": cfg.name, "topology": topology, "slices": slices, "devices": n,
      "chip": spec.name if spec else devices[0].device_kind,
      "mesh": dict(mesh.shape), "vocab": vocab_from,
      "global_batch": cfg.train.batch_size, "seq_len": cfg.data.max_seq_length,
      "grad_accum_steps": cfg.train.grad_accum_steps,
      "scan_layers": cfg.model.scan_layers, "remat": cfg.model.remat,
      "attention_impl": cfg.model.attention_impl, "dtype": cfg.model.dtype,
      "compile_seconds": round(compile_seconds, 1),
      "per_device": {
          "params_bytes": _per_device_bytes(state.params),
          "optimizer_bytes": _per_device_bytes(state.opt_state),
          "frozen_bytes": _per_device_bytes(state.frozen) if state.frozen is not None else 0,
      },
      "hbm_bytes": spec.hbm_bytes if spec else None,
      "analytic_flops_per_step": analytic,
  }
  per = report["per_device"]
  if compiled is None:
    need, capacity = oom
    per.update(total_bytes=need, temp_bytes=None)
    report.update(fits=False, hbm_bytes=capacity)
  else:
    mem = compiled.memory_analysis()
    live = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    per.update(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
               alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
               code_bytes=mem.generated_code_size_in_bytes, total_bytes=live)
    hlo = compiled.as_text() or ""
    report.update(fits=spec is None or live <= spec.hbm_bytes,
                  mosaic_kernels=hlo.count('custom_call_target="tpu_custom_call"'))
    found = read_collectives(hlo, list(mesh.devices.flat))
    report["collectives"] = summarize(found)
    links = link_seconds(found, spec)
    if costs is not None:
      xla_flops, accessed = costs  # per device: the partitioned program
      kernel = 0.0
      if report["mosaic_kernels"]:  # splash: its FLOPs are inside kernels XLA cannot cost
        kernel = 3.0 * tokens * kernel_attention_flops_per_token(
            cfg.model, cfg.data.max_seq_length) / n
        basis += "; + the splash kernels' attention FLOPs, counted analytically"
      report.update(xla_flops_per_device=xla_flops, kernel_flops_per_device=kernel,
                    xla_over_analytic=(xla_flops + kernel) * n / analytic if analytic else None,
                    bytes_accessed_per_device=accessed, cost_basis=basis)
    if spec is not None and costs is not None:  # roofline: as slow as its FLOPs or HBM traffic
      compute, memory = (xla_flops + kernel) / spec.peak_flops, accessed / spec.hbm_bandwidth
      seconds = max(compute, memory)
      mfu = lambda t: analytic / n / spec.peak_flops / t if t else None
      report.update(roofline_step_seconds=seconds, roofline_mfu=mfu(seconds),
                    compute_seconds=compute, hbm_seconds=memory)
      if links is not None:  # communication fully hidden behind the roofline ... not at all
        low = max(seconds, links["ici"], links["dcn"])
        high = seconds + links["ici"] + links["dcn"]
        report.update(ici_seconds=links["ici"], dcn_seconds=links["dcn"],
                      step_seconds_range=[low, high], mfu_range=[mfu(high), mfu(low)],
                      estimate_limits=LIMITS)
    if eval_compiled is not None:
      emem = eval_compiled.memory_analysis()
      report["eval_total_bytes"] = (emem.argument_size_in_bytes + emem.output_size_in_bytes
                                    - emem.alias_size_in_bytes + emem.temp_size_in_bytes)
    if save:
      from jax.experimental.serialize_executable import serialize

      payload, _, _ = serialize(compiled)
      Path(save).write_bytes(payload)
      report["saved"] = str(save)
  return report


def advice(report: dict) -> str:
  """One line: need vs capacity, and what to try."""
  need = report["per_device"]["total_bytes"]
  per, tries = report["per_device"], []
  if report["remat"] in ("none", "dots"):
    tries.append("model.remat=full (or names)")
  if report["mesh"]["fsdp"] < report["devices"]:
    fsdp = f"more mesh.fsdp (now {report['mesh']['fsdp']})"
    state = per["params_bytes"] + per["optimizer_bytes"] + per["frozen_bytes"]
    tries.insert(0 if state > need / 2 else len(tries), fsdp)  # weights dominate: shard them
  tries.append(f"fewer sequences per chip (train.batch_size={report['global_batch']} over "
               f"{report['devices']} chips, or train.grad_accum_steps)")
  return (f"does not fit: needs {need / GiB:.2f} GiB per chip, a {report['chip']} chip has "
          f"{report['hbm_bytes'] / GiB:.2f} GiB; try {', '.join(tries)}")


def format_report(r: dict) -> str:
  per = r["per_device"]
  g = lambda b: "-" if b is None else f"{b / GiB:.2f} GiB"
  lines = [
      f"{r['experiment']}: {r['slices']} x {r['topology']} = {r['devices']} {r['chip']} chips, "
      f"mesh {' x '.join(f'{k}={v}' for k, v in r['mesh'].items())}",
      f"  batch {r['global_batch']} x {r['seq_len']} tokens (accum {r['grad_accum_steps']}), "
      f"{r['dtype']}, attention {r['attention_impl']}, scan_layers={r['scan_layers']}, "
      f"remat={r['remat']}; vocab from {r['vocab']}",
      f"  per chip: params {g(per['params_bytes'])}, optimizer {g(per['optimizer_bytes'])}"
      + (f", teacher {g(per['frozen_bytes'])}" if per["frozen_bytes"] else "")
      + f", activations/temp {g(per.get('temp_bytes'))}, total {g(per['total_bytes'])} of "
      f"{g(r['hbm_bytes'])} HBM -> {'fits' if r['fits'] else 'DOES NOT FIT'}",
  ]
  if "xla_flops_per_device" in r:
    counted = (r["xla_flops_per_device"] + r["kernel_flops_per_device"]) * r["devices"]
    lines.append(f"  FLOPs/step: XLA {counted:.3e}, analytic "
                 f"{r['analytic_flops_per_step']:.3e} (ratio {r['xla_over_analytic']:.3f}; "
                 f"from {r['cost_basis']})")
  if r.get("roofline_step_seconds"):
    lines.append(f"  roofline: {r['roofline_step_seconds'] * 1e3:.1f} ms/step, MFU "
                 f"{r['roofline_mfu']:.1%}")
  if r.get("collectives"):
    lines.append("  collectives per step (per chip): " + ", ".join(
        f"{k} {v['runs']}x {v['bytes'] / GiB:.2f} GiB" for k, v in sorted(
            r["collectives"].items(), key=lambda kv: -kv[1]["bytes"])))
  if r.get("step_seconds_range"):
    low, high = r["step_seconds_range"]
    lines.append(f"  communication: ICI {r['ici_seconds'] * 1e3:.1f} ms, DCN "
                 f"{r['dcn_seconds'] * 1e3:.1f} ms -> step {low * 1e3:.1f}-{high * 1e3:.1f} ms "
                 f"(overlapped-serial), MFU {r['mfu_range'][0]:.1%}-{r['mfu_range'][1]:.1%}")
    lines.append(f"  not modelled: {r['estimate_limits'].split('; it does not model ')[-1]}")
  if r.get("mosaic_kernels"):
    lines.append(f"  Pallas/Mosaic kernel calls (splash attention): {r['mosaic_kernels']}")
  lines.append(f"  compiled in {r['compile_seconds']:.1f} s")
  return "\n".join(lines)

