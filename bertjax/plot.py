"""``bertjax plot``: one figure of training curves for one or more runs, read from their
``metrics.jsonl`` (pretraining and fine-tuning runs alike; a multi-seed fine-tuning folder
contributes one curve per seed)."""

from __future__ import annotations

import json
from pathlib import Path

from bertjax import layout
from bertjax.errors import UserError

# panel title -> (split, which metric keys), in order
PANELS = (
  ("loss", ("train", "eval"), lambda k: k == "loss"),
  ("accuracy / F1 (eval)", ("eval",), lambda k: "accuracy" in k or k in ("f1", "exact_match",
                                     "entity_f1", "pearson",
                                     "matthews")),
  ("learning rate", ("train",), lambda k: k == "learning_rate"),
  ("tokens / s", ("train",), lambda k: k == "tokens_per_second"),
)


def read_metrics(run: str | Path) -> dict[str, list[dict]]:
  """{label: rows} for a run folder (or each ``seed-*`` inside one)."""
  from bertjax.storage import as_path

  run = as_path(run)
  files = ([run / layout.METRICS] if (run / layout.METRICS).exists()
      else sorted(run.glob(f"{layout.SEEDS}/{layout.METRICS}")))
  if not files:
    raise UserError(f"{run}: no metrics.jsonl (not a bertjax run folder?)")
  out = {}
  for f in files:
    rows = []
    for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          raise UserError(f"{f}:{n}: not a JSON line") from None
    label = run.name if f.parent == run else f"{run.name}/{f.parent.name}"
    out[label] = rows
  return out


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
  """Draw loss, eval accuracy, learning rate and tokens/s against step; -> the image path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = {}
  for run in runs:
    curves.update(read_metrics(run))
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  for ax, (title, splits, wanted) in zip(axes.flat, PANELS):
    drawn = 0
    for label, rows in curves.items():
      for split in splits:
        keys = sorted({k for r in rows if r.get("split") == split for k in r
               if wanted(k)})
        for key in keys:
          points = [(r["step"], r[key]) for r in rows
               if r.get("split") == split and key in r]
          if points:
            xs, ys = zip(*points)
            name = f"{label} {split}" + (f" {key}" if len(keys) > 1 or split == "eval"
                          and title != "loss" else "")
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
            drawn += 1
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(title)
    if title == "learning rate":
      ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if drawn:
      ax.legend(fontsize=7)
    else:
      ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
