"""Pod-scale plans compiled from this CPU machine (libtpu compile-only devices; no TPU):
memory per chip for each remat policy, compile time with and without scan over layers, XLA
FLOPs against the analytic count, the roofline MFU of each pod preset on its slice.

  python benchmarks/pod_compile.py [--quick] [--out benchmarks/pod_compile.json]

Each row is one ``bertjax.train.aot.compile_pretraining`` call, the same code path as
``bertjax compile``. Compile times are wall-clock on this machine (2 cores, noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

for key, value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                   ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(key, value)

from bertjax.config import experiment_config  # noqa: E402
from bertjax.train.aot import GiB, compile_pretraining  # noqa: E402

BERT_LARGE = ["model.dtype=bfloat16", "model.max_position_embeddings=512",
              "data.max_seq_length=512", "data.max_predictions_per_seq=76",
              "train.batch_size=256", "mesh.data=1", "mesh.fsdp=4"]


def cases(quick: bool):
  """(label, preset, overrides, topology, vocab, FLOPs too?) -- most telling first."""
  out = [
      # the pod presets on their target slices: fit, and a roofline MFU
      ("BERT-large (preset: 64/chip, fsdp 4, remat names)", "bert-large-pretrain", [], "v5e-16",
       30522, True),
      ("ModernBERT-large seq 8192 (preset, splash)", "modernbert-large-pretrain", [], "v5p-8",
       50368, True),
      ("EuroBERT-2.1B seq 2048 (preset, fsdp 32)", "eurobert-2.1b-pretrain", [], "v5p-64",
       128256, True),
  ]
  # BERT-large, 64 sequences per chip on 4 chips: memory per remat policy, v5e and v5p
  out += [(f"BERT-large 64/chip remat={remat}", "bert-large-pretrain",
           BERT_LARGE + [f"model.remat={remat}"], "v5e-4", 30522, remat != "none")
          for remat in ("none", "full", "names", "dots")]
  if quick:
    return out
  out += [(f"BERT-large 64/chip remat={remat}", "bert-large-pretrain",
           BERT_LARGE + [f"model.remat={remat}"], "v5p-8", 30522, False)
          for remat in ("none", "full", "names")]
  # compile time against depth, scanned and unrolled, at 16 sequences per chip so the unrolled
  # no-remat step fits and XLA costs it directly (its FLOPs against the analytic count)
  for layers, scan in ((2, "true"), (24, "true"), (2, "false"), (24, "false")):
    out.append((f"BERT-large 16/chip {layers} layers scan={scan} remat=none",
                "bert-large-pretrain",
                BERT_LARGE + ["train.batch_size=64", f"model.num_layers={layers}",
                              f"model.scan_layers={scan}", "model.remat=none"], "v5p-8", 30522,
                scan == "false"))
  return out


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true", help="only the v5e remat rows")
  p.add_argument("--out", default=None)
  p.add_argument("--only", action="append", default=[],
                 help="run only the rows whose label and slice contain this text (repeatable)")
  args = p.parse_args()
  rows = []
  print("| plan | slice | params+opt / chip | temp / chip | total / chip | HBM | fits | "
        "XLA/analytic FLOPs | roofline MFU | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for label, preset, overrides, topology, vocab, flops in cases(args.quick):
    if args.only and not any(o in f"{label} {topology}" for o in args.only):
      continue
    r = compile_pretraining(experiment_config(preset, overrides), topology, vocab_size=vocab,
                            unrolled_costs=flops)
    per = r["per_device"]
    g = lambda b: "-" if b is None else f"{b / GiB:.2f} GiB"
    ratio = r.get("xla_over_analytic")
    mfu = r.get("roofline_mfu")
    print(f"| {label} | {topology} | {g(per['params_bytes'] + per['optimizer_bytes'])} | "
          f"{g(per.get('temp_bytes'))} | {g(per['total_bytes'])} | {g(r['hbm_bytes'])} | "
          f"{'yes' if r['fits'] else 'NO'} | "
          f"{'-' if ratio is None else f'{ratio:.3f}'} | "
          f"{'-' if mfu is None else f'{mfu:.1%}'} | {r['compile_seconds']:.0f} |", flush=True)
    rows.append({"label": label, **r})
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
