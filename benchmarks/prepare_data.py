"""``bertjax prepare-data`` at corpus scale on this machine: text MB/s per worker, the scaling
from 1 to N workers (interleaved rounds on the same corpus), peak memory on a small and a large
generated corpus (the whole process tree, sampled), and the input pipeline's tokens/s when
training reads the result.

The corpus is generated from the shipped books: their paragraphs shuffled into documents of
20-300 paragraphs, written as plain-text files of ``--file-mb`` each (so work units are byte
ranges and the tokenizer sees real English).

  python benchmarks/prepare_data.py [--small-mb 100] [--large-mb 2048] [--rounds 2] [--workers 2]

Each worker tokenizes on one core (TOKENIZERS_PARALLELISM=false), so N workers use N cores.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, megabytes: int, file_mb: int, seed: int = 0) -> int:
  from bertjax.data.sources import corpus_files

  paragraphs = [line for f in corpus_files()
                for line in lzma.open(f, "rt", encoding="utf-8").read().splitlines()
                if line.strip()]
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True)
  total, k = 0, 0
  while total < megabytes << 20:
    parts, size = [], 0
    while size < file_mb << 20:
      doc = "\n".join(paragraphs[i] for i in rng.integers(0, len(paragraphs),
                                                          rng.integers(20, 300)))
      parts.append(doc)
      size += len(doc) + 2
    data = "\n\n".join(parts) + "\n"
    (folder / f"part-{k:04d}.txt").write_text(data, encoding="utf-8")
    total += len(data.encode("utf-8"))
    k += 1
  return total


def run(source: Path, out: Path, workers: int) -> dict:
  """One ``prepare-data`` run; wall time and peak RSS (sum over the process tree, and the
  largest single process), sampled every 0.2 s."""
  import psutil

  shutil.rmtree(out, ignore_errors=True)
  env = dict(os.environ, TOKENIZERS_PARALLELISM="false", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT))
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "bertjax.cli", "prepare-data",
                           f"data.source={source}", "--out", str(out), "--workers", str(workers)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  root = psutil.Process(proc.pid)
  peak_tree = peak_one = 0
  while proc.poll() is None:
    try:
      rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
    except psutil.Error:
      rss = []
    if rss:
      peak_tree, peak_one = max(peak_tree, sum(rss)), max(peak_one, max(rss))
    time.sleep(0.2)
  wall = time.perf_counter() - start
  _, err = proc.communicate()
  if proc.returncode:
    raise SystemExit(f"prepare-data failed:\n{err}")
  meta = json.loads((out / "meta.json").read_text())
  return {"wall_s": wall, "peak_tree_mib": peak_tree / 2**20, "peak_process_mib": peak_one / 2**20,
          "train_tokens": meta["train_tokens"], "instances": meta["num_train"],
          "shards": len(meta["train"]), "units": meta["units"]}


def pipeline_tokens_per_s(folder: Path, batches: int = 300) -> float:
  """Masked MLM+NSP batches of 32 x 128 read from the prepared folder (one process)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from bertjax.config import experiment_config
  from bertjax.data.corpus import load_corpus
  from bertjax.data.pipeline import make_dataset, masking_spec

  cfg = experiment_config(None, [f"data.source={folder}"]).data
  corpus = load_corpus(cfg)
  it = iter(make_dataset(corpus.train, masking_spec(cfg, corpus.tokenizer), cfg,
                         local_batch_size=32, pad_id=corpus.tokenizer.pad_id))
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  return batches * batch["input_ids"].size / (time.perf_counter() - start)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--small-mb", type=int, default=100)
  ap.add_argument("--large-mb", type=int, default=2048, help="0: skip the large corpus")
  ap.add_argument("--file-mb", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
  args = ap.parse_args()
  scratch = Path(args.dir or tempfile.mkdtemp(prefix="bertjax-prep-bench-"))
  small = scratch / "small"
  if not small.exists():
    generate(small, args.small_mb, args.file_mb)
  mb = sum(f.stat().st_size for f in small.iterdir()) / 2**20
  print(f"small corpus: {mb:.0f} MiB of text in {len(list(small.iterdir()))} files")
  times = {1: [], args.workers: []}
  for r in range(args.rounds):  # interleaved: 1 worker, N workers, then N, 1, ...
    for w in ([1, args.workers] if r % 2 == 0 else [args.workers, 1]):
      res = run(small, scratch / "out", w)
      times[w].append(res["wall_s"])
      print(json.dumps({"corpus_mib": round(mb), "workers": w, **{k: round(v, 1) if
                        isinstance(v, float) else v for k, v in res.items()},
                        "mib_per_s": round(mb / res["wall_s"], 2)}), flush=True)
  one, many = statistics.median(times[1]), statistics.median(times[args.workers])
  print(f"1 worker: {mb / one:.2f} MiB/s; {args.workers} workers: {mb / many:.2f} MiB/s "
        f"= {one / many:.2f}x (rounds: {[round(t, 1) for t in times[1]]} vs "
        f"{[round(t, 1) for t in times[args.workers]]} s)")
  per_worker = mb / one
  print(f"projection, 20 GB of text on one v5p host (208 vCPUs, ~200 workers if linear): "
        f"{20 * 1024 / (per_worker * 200) / 3600:.2f} h; on this machine with "
        f"{args.workers} workers: {20 * 1024 / (mb / many) / 3600:.1f} h")
  print(f"input pipeline reading the prepared folder: "
        f"{pipeline_tokens_per_s(scratch / 'out'):,.0f} tokens/s (32 x 128 MLM+NSP batches, "
        "one process)")
  if args.large_mb:
    large = scratch / "large"
    if not large.exists():
      generate(large, args.large_mb, args.file_mb, seed=1)
    lmb = sum(f.stat().st_size for f in large.iterdir()) / 2**20
    res = run(large, scratch / "out-large", args.workers)
    print(json.dumps({"corpus_mib": round(lmb), "workers": args.workers,
                      **{k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()},
                      "mib_per_s": round(lmb / res["wall_s"], 2)}), flush=True)
    shutil.rmtree(scratch / "out-large", ignore_errors=True)
  if not args.dir:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
