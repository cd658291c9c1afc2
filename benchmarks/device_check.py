"""One prepared check on a real accelerator: what the compiled plan predicts next to what the
device measures. JSON + markdown into --out.

  python benchmarks/device_check.py --out device-check            # a GPU (or TPU) machine
  python benchmarks/device_check.py --smoke --out /tmp/dc         # CPU, tiny shapes (tests)

  a. parity   -- the eight families' forward on the device vs CPU f32 (f32 within 1e-4; bf16
                 reported), and the cuDNN attention path vs the reference for padding, packed
                 segments and grouped-query heads (GPU only)
  b. steps    -- BERT-base seq 128 and BERT-large seq 512 train steps in bf16: tokens/s and MFU
                 against the chip's peak (bertjax.train.flops.CHIPS), per attention
                 implementation (einsum / xla / cudnn) and remat policy (none / full)
  c. memory   -- for each step of (b): the compiled plan's bytes (memory_analysis) next to the
                 device's measured peak (memory_stats), and their ratio
  d. input    -- the input pipeline's tokens/s (masking, batching on the host) next to what the
                 BERT-base step consumes: does the host keep up
  e. ckpt     -- an Orbax save and restore of BERT-large's train state: seconds and GB/s
  f. long     -- ModernBERT at 8k tokens vs 1k per attention implementation: time and peak
                 memory per token

Each train step runs in its own process (a clean peak-memory counter, a per-case timeout; with
--smoke all in one) and a section that fails records its error instead of ending the check. On the lent GPU machine (no
package registry) carry the wheels ``benchmarks/device_wheels.sh`` prepares; docs: README,
"A real accelerator". ``--smoke`` runs every section with tiny shapes on CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("bert", "roberta", "albert", "distilbert", "electra", "spanbert", "modernbert",
            "eurobert")
# --smoke (the test suite, on CPU) runs three families, one per block design: post-norm GELU
# with absolute positions (BERT), pre-norm GeGLU with RoPE and local windows (ModernBERT),
# RMSNorm SwiGLU with grouped-query attention (EuroBERT); the device run takes all eight
SMOKE_FAMILIES = ("bert", "modernbert", "eurobert")
ATTENTION = ("einsum", "xla", "cudnn")
REMAT = ("none", "full")


# -- shapes -----------------------------------------------------------------------------------
def step_cases(smoke: bool) -> list[dict]:
  """(b)/(c): one dict of experiment overrides per train step measured."""
  models = ([("bert-tiny seq 64", "bert-tiny", 64, 16, 8)] if smoke else
            [("BERT-base seq 128", "bert-base", 128, 20, 64),
             ("BERT-large seq 512", "bert-large", 512, 76, 16)])
  out = []
  smoke_pairs = {("einsum", "none"), ("xla", "full"), ("cudnn", "none")}  # every value once
  for label, model, seq, preds, batch in models:
    for attention in ATTENTION:
      for remat in REMAT:
        if smoke and (attention, remat) not in smoke_pairs:
          continue
        if not smoke and model == "bert-base" and remat != "none":
          continue  # BERT-base at 64 x 128 fits without remat; time goes to BERT-large
        out.append({"label": f"{label} {attention} remat={remat}", "overrides": [
            f"model.preset={model}", "model.dtype=bfloat16", "data.tokenizer=bert-base-uncased",
            f"data.max_seq_length={seq}", f"data.max_predictions_per_seq={preds}",
            f"model.max_position_embeddings={max(seq, 512)}", f"train.batch_size={batch}",
            f"model.attention_impl={attention}", f"model.remat={remat}",
            "model.attention_dropout=0.0"], "steps": 3 if smoke else 20})
  return out


def long_cases(smoke: bool) -> list[dict]:
  """(f): ModernBERT, packed sequences, at a short and a long length."""
  model, lengths = ("modernbert-tiny", (64, 256)) if smoke else ("modernbert-base", (1024, 8192))
  return [{"label": f"{model} seq {n} {attention}", "tokens": n, "overrides": [
      f"model.preset={model}", "model.dtype=bfloat16", "data.tokenizer=corpus-bpe",
      "data.instances=packed", f"data.max_seq_length={n}", f"model.max_position_embeddings={n}",
      f"data.max_predictions_per_seq={n * 3 // 10}", "data.mask_rate=0.3",
      "train.batch_size=1", f"model.attention_impl={attention}", "model.remat=full",
      "model.attention_dropout=0.0"], "steps": 2 if smoke else 10}
      for n in lengths for attention in ("flash", "cudnn")
      if not smoke or (n, attention) in ((lengths[0], "flash"), (lengths[1], "cudnn"))]


# -- one train step, in its own process -------------------------------------------------------
def synthetic_batch(shapes: dict, vocab: int, seed: int = 0) -> dict:
  import numpy as np

  rng = np.random.default_rng(seed)
  out = {}
  for name, (shape, dtype) in shapes.items():
    dtype = np.dtype(dtype)
    if name == "masked_positions":
      seq = shapes["input_ids"][0][1]
      rows = [np.sort(rng.choice(np.arange(1, seq - 1), shape[1], replace=False))
              for _ in range(shape[0])]
      out[name] = np.stack(rows).astype(dtype)
    elif name in ("input_ids", "masked_ids"):
      out[name] = rng.integers(5, vocab, shape).astype(dtype)
    elif name == "segment_ids":
      out[name] = np.ones(shape, dtype)
    elif dtype == np.bool_ or "weights" in name or name == "padding_mask":
      out[name] = np.ones(shape, dtype)
    else:
      out[name] = np.zeros(shape, dtype)
  return out


def run_case(case: dict) -> dict:
  """Compile the pretraining step for ``case``, run it, and measure (in this process)."""
  import jax

  from bertjax.nn.attention import attention_paths
  from bertjax.train import planning
  from bertjax.train.flops import peak_flops, step_flops_per_token

  attention_paths(clear=True)  # this case's paths only
  with engine_for(case["overrides"]) as (cfg, mesh, shapes, engine):
    t0 = time.perf_counter()
    compiled = engine.train_step.lower(engine.abstract_state(),
                                       engine.abstract_batch(shapes)).compile()
    compile_s = time.perf_counter() - t0
    planning.init_engine_state(cfg, engine, None)
    batch = engine.batch(synthetic_batch(shapes, cfg.model.vocab_size))
    state = engine.state
    for _ in range(2):  # warm-up
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(case["steps"]):
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = cfg.train.batch_size * cfg.data.max_seq_length
    peak = peak_flops(mesh, cfg.train.peak_flops_per_device)
    tps = tokens / step_s
    mem = compiled.memory_analysis()
    planned = None if mem is None else int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                           + mem.output_size_in_bytes
                                           - mem.alias_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    measured = stats.get("peak_bytes_in_use")
    return {"label": case["label"], "devices": mesh.devices.size,
            "batch": cfg.train.batch_size, "seq": cfg.data.max_seq_length,
            "compile_s": round(compile_s, 2), "step_ms": round(step_s * 1e3, 3),
            "tokens_per_s": round(tps, 1),
            "mfu": tps * step_flops_per_token(cfg) / peak if peak else None,
            "peak_flops": peak, "loss": _loss(engine, metrics),
            "planned_bytes": planned, "measured_peak_bytes": measured,
            "measured_over_planned": (measured / planned) if planned and measured else None,
            "attention_paths": attention_paths()}


@contextlib.contextmanager
def engine_for(overrides: list[str]):
  """(config, mesh, batch shapes, engine) for a bert-demo config with ``overrides`` and its
  tokenizer's vocabulary, the mesh active inside; the engine's state is not initialised."""
  import jax

  from bertjax import sharding
  from bertjax.config import experiment_config
  from bertjax.data.pipeline import batch_spec
  from bertjax.train import planning
  from bertjax.train.run import plan_mesh

  cfg, _ = _with_vocab(experiment_config("bert-demo", overrides))
  mesh = plan_mesh(cfg.mesh, train_batch_size=cfg.train.batch_size)
  with sharding.use_mesh(mesh, cfg.mesh.rules):
    shapes = batch_spec(cfg.data, batch_size=cfg.train.batch_size,
                        vocab_size=cfg.model.vocab_size)
    engine, _ = planning.plan_engine(cfg, {k: jax.ShapeDtypeStruct(*v)
                                           for k, v in shapes.items()})
    yield cfg, mesh, shapes, engine


def _loss(engine, metrics) -> float:
  import jax
  import numpy as np

  host = jax.tree.map(np.asarray, jax.device_get(metrics))
  host.pop("guard", None)
  return float(engine.objective.finalize(host)["loss"])


def _with_vocab(cfg):
  """The config with its tokenizer's vocabulary (no corpus needed)."""
  from bertjax.data.corpus import load_tokenizer
  from bertjax.train.planning import resolve_model

  tokenizer = load_tokenizer(cfg.data)
  return resolve_model(cfg, tokenizer), tokenizer


def in_subprocess(cases: list[dict], timeout: float) -> list[dict]:
  """``run_case`` for each case in one fresh process (its own peak-memory counter, a bounded
  time); --smoke runs all its cases in one process (a CPU has no memory counter to keep apart)."""
  try:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(cases)],
                         capture_output=True, text=True, timeout=timeout * len(cases))
  except subprocess.TimeoutExpired:
    return [{"label": c["label"], "error": f"timed out after {timeout:.0f} s"} for c in cases]
  done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode or len(done) < len(cases):
    tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    done += [{"label": c["label"], "error": f"exit {out.returncode}: {tail}"}
             for c in cases[len(done):]]
  return done


def measure(cases: list[dict], smoke: bool, timeout: float) -> list[dict]:
  if smoke:
    return in_subprocess(cases, timeout)
  return [r for c in cases for r in in_subprocess([c], timeout)]


# -- the sections -----------------------------------------------------------------------------
def parity(smoke: bool) -> dict:
  """(a) Each family's forward on the device vs CPU f32, same parameters and inputs."""
  import jax
  import numpy as np
  from flax import nnx

  from bertjax.config import model_config
  from bertjax.models import Model

  cpu = jax.devices("cpu")[0]
  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  out = {}
  for family in SMOKE_FAMILIES if smoke else FAMILIES:
    cfg = model_config(f"{family}-tiny")
    with jax.default_device(cpu):
      graphdef, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
    ids = rng.integers(5, cfg.vocab_size, (2, 32 if smoke else 128)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, 20:] = False  # one padded row

    def forward(graphdef, params, ids, mask):
      return nnx.merge(graphdef, params)(ids, padding_mask=mask).last_hidden_state

    with jax.default_device(cpu):
      ref = np.asarray(jax.jit(forward, static_argnums=0)(graphdef, params, ids, mask))
    row = {}
    for dtype in ("float32", "bfloat16"):
      g = nnx.split(Model(model_config(f"{family}-tiny", [f"dtype={dtype}"]),
                          rngs=nnx.Rngs(0)))[0] if dtype != "float32" else graphdef
      got = jax.jit(forward, static_argnums=0)(g, jax.device_put(params, device),
                                              jax.device_put(ids, device),
                                              jax.device_put(mask, device))
      got = np.asarray(got, np.float32)
      row[f"max_abs_diff_{dtype}"] = float(np.max(np.abs(got - ref)[mask]))
    row["ok"] = row["max_abs_diff_float32"] <= 1e-4
    out[family] = row
  out["cudnn_vs_reference"] = cudnn_cases()
  return out


def cudnn_cases() -> dict:
  """cuDNN fused attention against the einsum reference on the device, bf16, for the masks that
  matter (MaxText's packed-segment bug): padding, packed segments, GQA. GPU only."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bertjax.nn import cudnn
  from bertjax.nn.attention import AttentionMask, einsum_attention

  if jax.devices()[0].platform != "gpu":
    return {"skipped": f"not on a GPU ({jax.devices()[0].platform})"}
  rng = np.random.default_rng(0)
  out = {}
  b, t, d = 2, 256, 64
  padding = np.ones((b, t), bool)
  padding[1, 200:] = False
  segments = np.concatenate([np.full((b, 100), 1), np.full((b, 100), 2), np.zeros((b, 56))],
                            axis=1).astype(np.int32)
  for name, heads, kv, mask in (("padding", 8, 8, AttentionMask(padding_mask=padding)),
                                ("packed segments", 8, 8, AttentionMask(segment_ids=segments)),
                                ("GQA + padding", 8, 2, AttentionMask(padding_mask=padding))):
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.bfloat16) for _ in range(2))
    dense = mask.dense(t, t)
    ref = einsum_attention(q, k, v, dense, scale=d ** -0.5).astype(jnp.float32)
    try:
      got = jax.jit(lambda q, k, v: cudnn.cudnn_attention(q, k, v, dense, scale=d ** -0.5))(
          q, k, v).astype(jnp.float32)
    except Exception as e:  # noqa: BLE001 -- an unsupported case is a finding, not a crash
      out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
      continue
    valid = np.asarray(dense.any(-1))[:, 0] if dense is not None else np.ones((b, t), bool)
    diff = np.abs(np.asarray(got) - np.asarray(ref))[valid]
    out[name] = {"max_abs_diff": float(diff.max()), "ok": bool(diff.max() <= 2e-2)}
  return out


def input_pipeline(smoke: bool, consumed_tokens_per_s: float | None) -> dict:
  """(d) The host pipeline's tokens/s (masking + batching of tokenized text)."""
  from bertjax.config import experiment_config
  from bertjax.data.corpus import load_corpus
  from bertjax.data.pipeline import make_dataset, masking_spec

  source = "corpus"
  if smoke:  # a slice of the shipped novels, so the check tokenizes little
    text = lzma.open(Path(__file__).resolve().parent.parent / "bertjax" / "data" / "corpus" /
                     "gutenberg-novels.txt.xz", "rt").read(400_000)
    source = os.path.join(tempfile.mkdtemp(), "slice.txt")
    Path(source).write_text(text)
  seq, batch = (64, 8) if smoke else (128, 64)
  cfg = experiment_config("bert-demo", [f"data.source={source}",
                                        "data.tokenizer=bert-base-uncased",
                                        f"data.max_seq_length={seq}", f"train.batch_size={batch}"])
  corpus = load_corpus(cfg.data)
  it = iter(make_dataset(corpus.train, masking_spec(cfg.data, corpus.tokenizer), cfg.data,
                         local_batch_size=batch, pad_id=corpus.tokenizer.pad_id))
  next(it)
  n = 20 if smoke else 200
  t = time.perf_counter()
  for _ in range(n):
    next(it)
  tps = n * batch * seq / (time.perf_counter() - t)
  out = {"tokens_per_s": round(tps, 1), "batch": batch, "seq": seq, "cpus": os.cpu_count()}
  if consumed_tokens_per_s:
    out["step_consumes_tokens_per_s"] = consumed_tokens_per_s
    out["host_keeps_up"] = tps >= consumed_tokens_per_s
    out["headroom"] = round(tps / consumed_tokens_per_s, 2)
  return out


def checkpoint(smoke: bool) -> dict:
  """(e) Orbax save + restore of a BERT(-large) train state, seconds and GB/s."""
  import jax

  from bertjax.config import CheckpointConfig
  from bertjax.train import planning
  from bertjax.train.checkpointer import Checkpointer

  folder = Path(tempfile.mkdtemp()) / "checkpoints"
  with engine_for([f"model.preset={'bert-tiny' if smoke else 'bert-large'}",
                "data.tokenizer=bert-base-uncased", "train.batch_size=8"]) as (cfg, _, _, engine):
    planning.init_engine_state(cfg, engine, None)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(engine.state))
    ckpt = Checkpointer(folder, CheckpointConfig())
    t = time.perf_counter()
    ckpt.save(1, engine.state, None, force=True)
    ckpt.wait()
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    step, state = ckpt.restore_latest(engine.abstract_state(), None)
    jax.block_until_ready(state)
    restore_s = time.perf_counter() - t
    ckpt.close()
  return {"model": "bert-tiny" if smoke else "bert-large",
          "gb": round(nbytes / 1e9, 3), "save_s": round(save_s, 2),
          "restore_s": round(restore_s, 2), "save_gb_per_s": round(nbytes / 1e9 / save_s, 3),
          "restore_gb_per_s": round(nbytes / 1e9 / restore_s, 3), "restored_step": step}


# -- the report -------------------------------------------------------------------------------
def gib(x):
  return "--" if x is None else f"{x / 2**30:.2f} GiB"


def markdown(report: dict) -> str:
  s = report["sections"]
  lines = [f"# Device check: {report['device']}", "",
           f"jax {report['jax']}, {report['devices']} device(s), {report['python']}, "
           f"{'smoke (tiny shapes)' if report['smoke'] else 'full'}; {report['seconds']:.0f} s",
           ""]
  if "parity" in s:
    lines += ["## a. Forward parity vs CPU f32", "", "| family | f32 max abs diff | bf16 max abs "
              "diff | f32 within 1e-4 |", "|---|---:|---:|---|"]
    for fam in FAMILIES:
      r = s["parity"].get(fam, {})
      if "max_abs_diff_float32" in r:
        lines.append(f"| {fam} | {r['max_abs_diff_float32']:.2e} | "
                     f"{r['max_abs_diff_bfloat16']:.2e} | {r['ok']} |")
    lines += ["", f"cuDNN vs reference: `{json.dumps(s['parity'].get('cudnn_vs_reference'))}`",
              ""]
  for key, title in (("steps", "b/c. Train steps (bf16): speed and memory"),
                     ("long", "f. Long context (ModernBERT)")):
    if key not in s:
      continue
    lines += [f"## {title}", "", "| case | step | tokens/s | MFU | compiled plan | measured peak"
              " | measured / plan | attention ran |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in s[key]:
      if "error" in r:
        lines.append(f"| {r['label']} | error: {r['error']} | | | | | | |")
        continue
      mfu = "--" if r["mfu"] is None else f"{r['mfu']:.1%}"
      ratio = "--" if r["measured_over_planned"] is None else f"{r['measured_over_planned']:.2f}"
      ran = "; ".join(f"{k}: {v}" for k, v in r["attention_paths"].items())
      lines.append(f"| {r['label']} | {r['step_ms']:.1f} ms | {r['tokens_per_s']:,.0f} | {mfu} |"
                   f" {gib(r['planned_bytes'])} | {gib(r['measured_peak_bytes'])} | {ratio} |"
                   f" {ran} |")
    lines.append("")
  for key, title in (("input", "d. Input pipeline"), ("checkpoint", "e. Orbax checkpoint")):
    if key in s:
      lines += [f"## {title}", "", "```", json.dumps(s[key], indent=1), "```", ""]
  if report["errors"]:
    lines += ["## Errors", "", "```", json.dumps(report["errors"], indent=1), "```", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="device-check", help="folder for device_check.json/.md")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (the test suite)")
  ap.add_argument("--sections", default="parity,steps,input,checkpoint,long")
  ap.add_argument("--case-timeout", type=float, default=180.0, help="seconds per train step case")
  ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
  args = ap.parse_args(argv)
  if args.case:
    for case in json.loads(args.case):
      print(json.dumps(run_case(case)), flush=True)
    return 0
  import jax

  start = time.perf_counter()
  sections, errors, seconds = {}, {}, {}
  wanted = args.sections.split(",")

  def section(name, fn):
    if name not in wanted:
      return
    t = time.perf_counter()
    try:
      sections[name] = fn()
    except Exception as e:  # noqa: BLE001 -- a failing section is reported; the rest still run
      errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    seconds[name] = round(time.perf_counter() - t, 1)
    print(f"device_check: {name} took {seconds[name]:.0f} s", file=sys.stderr, flush=True)

  section("parity", lambda: parity(args.smoke))
  section("steps", lambda: measure(step_cases(args.smoke), args.smoke, args.case_timeout))
  consumed = max((r["tokens_per_s"] for r in sections.get("steps", [])
                  if "error" not in r and r["seq"] == (64 if args.smoke else 128)), default=None)
  section("input", lambda: input_pipeline(args.smoke, consumed))
  section("checkpoint", lambda: checkpoint(args.smoke))
  section("long", lambda: measure(long_cases(args.smoke), args.smoke, args.case_timeout))
  for r in sections.get("long", []):
    if "error" not in r:
      r["us_per_token"] = round(r["step_ms"] * 1e3 / r["seq"], 3)
      r["peak_bytes_per_token"] = (r["measured_peak_bytes"] / r["seq"]
                                   if r["measured_peak_bytes"] else None)
  report = {"device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
            "devices": jax.device_count(), "jax": jax.__version__,
            "python": platform.python_version(), "smoke": args.smoke,
            "seconds": time.perf_counter() - start, "section_seconds": seconds,
            "sections": sections, "errors": errors}
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "device_check.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "device_check.md").write_text(markdown(report))
  print(f"device_check: {out / 'device_check.md'} ({report['seconds']:.0f} s)", file=sys.stderr)
  return 1 if errors else 0


if __name__ == "__main__":
  sys.exit(main())
