"""BERT-base MLM+NSP training step, bertjax vs Hugging Face PyTorch (f32), interleaved.

Two long-lived worker processes take turns one step at a time (order swapped every round), so
both see the same machine state; we report per-pair time ratios (the robust figure on a noisy
host), tokens/s, and MFU against the XLA f32 matmul peak measured in this same run. Also: the
input pipeline's tokens/s per core on pre-tokenized (ArrayRecord) data.

  python benchmarks/train_step.py [--rounds 10] [--batch 8] [--seq 128] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

PREDICTIONS = 20


def make_batch(vocab: int, batch: int, seq: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (batch, seq)).astype(np.int32)
  types = np.zeros_like(ids)
  types[:, seq // 2:] = 1
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq - 1), PREDICTIONS, replace=False)
                                for _ in range(batch)]), axis=1).astype(np.int32)
  labels = np.take_along_axis(ids, positions, axis=1)
  nsp = rng.integers(0, 2, batch).astype(np.int32)
  return ids, types, positions, labels, nsp


def jax_worker(conn, args):
  import jax
  import numpy as np
  from flax import nnx

  from bertjax.config import OptimConfig, model_config
  from bertjax.models import Model
  from bertjax.objectives import MlmObjective
  from bertjax.train.flops import measure_matmul_peak
  from bertjax.train.optim import make_optimizer
  from bertjax.train.step import init_state, make_train_step

  cfg = model_config("bert-base", [f"num_layers={args.layers}"])
  graphdef, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  tx = make_optimizer(OptimConfig(learning_rate=1e-4, warmup_steps=10), 1000)
  state = init_state(graphdef, params, tx, 0)
  step = jax.jit(make_train_step(graphdef, MlmObjective(), tx), donate_argnums=0)
  ids, types, positions, labels, nsp = make_batch(cfg.vocab_size, args.batch, args.seq)
  batch = {"input_ids": ids, "token_type_ids": types, "padding_mask": np.ones_like(ids, bool),
           "masked_positions": positions, "masked_ids": labels,
           "masked_weights": np.ones(positions.shape, np.float32), "seq_relationship_label": nsp}
  batch = jax.device_put(batch)
  peaks = [measure_matmul_peak()]
  conn.send("ready")
  while (msg := conn.recv()) != "stop":
    if msg == "peak":
      import bertjax.train.flops as f
      f._measured = None
      peaks.append(measure_matmul_peak())
      conn.send(peaks[-1])
      continue
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["objective"])
    conn.send((time.perf_counter() - t, float(metrics["objective"])))
  conn.send(max(peaks))


def torch_worker(conn, args):
  import torch
  import transformers as T

  torch.set_num_threads(os.cpu_count() or 2)
  torch.manual_seed(0)
  cfg = T.BertConfig(num_hidden_layers=args.layers)  # bert-base-uncased shape, dropout 0.1
  model = T.BertForPreTraining(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
  ids, types, positions, labels, nsp = make_batch(cfg.vocab_size, args.batch, args.seq)
  mlm_labels = torch.full((args.batch, args.seq), -100, dtype=torch.long)
  mlm_labels.scatter_(1, torch.tensor(positions, dtype=torch.long), torch.tensor(labels, dtype=torch.long))
  inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                token_type_ids=torch.tensor(types, dtype=torch.long),
                attention_mask=torch.ones(args.batch, args.seq, dtype=torch.long),
                labels=mlm_labels, next_sentence_label=torch.tensor(nsp, dtype=torch.long))
  conn.send("ready")
  while conn.recv() != "stop":
    t = time.perf_counter()
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    conn.send((time.perf_counter() - t, float(loss)))
  conn.send(None)


def pipeline_tokens_per_second(batches: int = 300) -> dict:
  """Input pipeline on pre-tokenized ArrayRecord instances, in-process (one core)."""
  from bertjax.config import DataConfig
  from bertjax.data.corpus import load_corpus
  from bertjax.data.pipeline import make_dataset, masking_spec
  from bertjax.data.prepare import prepare_data

  out = os.path.join(tempfile.mkdtemp(), "prepared")
  cfg = DataConfig()
  prepare_data(cfg, out)
  cfg = DataConfig(source=out)
  corpus = load_corpus(cfg)
  spec = masking_spec(cfg, corpus.tokenizer)
  it = iter(make_dataset(corpus.train, spec, cfg, local_batch_size=32, pad_id=corpus.tokenizer.pad_id))
  for _ in range(10):
    next(it)
  cpu0, t0 = time.process_time(), time.perf_counter()
  tokens = real = 0
  for _ in range(batches):
    b = next(it)
    tokens += b["input_ids"].size
    real += int(b["padding_mask"].sum())
  cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
  return {"tokens_per_second_wall": tokens / wall, "tokens_per_cpu_second": tokens / cpu,
          "real_tokens_per_cpu_second": real / cpu, "cpu_seconds": cpu, "wall_seconds": wall}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--gap", type=float, default=0.5,
                 help="seconds between turns, so neither side's spinning worker threads "
                      "(OpenMP, Eigen) eat into the other's step")
  p.add_argument("--skip-pipeline", action="store_true")
  args = p.parse_args()

  report = {"config": vars(args)}
  if not args.skip_pipeline:
    report["input_pipeline"] = pipeline_tokens_per_second()
    print(json.dumps({"input_pipeline": report["input_pipeline"]}), flush=True)

  ctx = mp.get_context("spawn")
  workers = {}
  for name, fn in (("bertjax", jax_worker), ("hf_torch", torch_worker)):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=fn, args=(child, args), daemon=True)
    proc.start()
    workers[name] = (parent, proc)
  for name, (conn, _) in workers.items():
    assert conn.recv() == "ready", name

  times = {name: [] for name in workers}
  losses = {name: [] for name in workers}
  order = list(workers)
  for r in range(args.warmup + args.rounds):
    for name in (order if r % 2 == 0 else order[::-1]):
      conn = workers[name][0]
      time.sleep(args.gap)
      conn.send("step")
      dt, loss = conn.recv()
      if r >= args.warmup:
        times[name].append(dt)
        losses[name].append(loss)
    if r >= args.warmup:
      print(f"round {r - args.warmup}: bertjax {times['bertjax'][-1]:.3f}s  "
            f"hf_torch {times['hf_torch'][-1]:.3f}s", flush=True)
  workers["bertjax"][0].send("peak")
  workers["bertjax"][0].recv()
  peaks = {}
  for name, (conn, proc) in workers.items():
    conn.send("stop")
    peaks[name] = conn.recv()
    proc.join(timeout=30)
  peak = peaks["bertjax"]

  from bertjax.config import model_config
  from bertjax.train.flops import train_flops_per_token

  cfg = model_config("bert-base", [f"num_layers={args.layers}"])
  tokens = args.batch * args.seq
  flops = tokens * train_flops_per_token(cfg, args.seq, PREDICTIONS)
  ratios = [t / j for t, j in zip(times["hf_torch"], times["bertjax"])]
  summary = {}
  for name in workers:
    med = statistics.median(times[name])
    summary[name] = {"step_s_median": med, "step_s_min": min(times[name]),
                     "step_s_max": max(times[name]), "tokens_per_second": tokens / med,
                     "mfu_vs_xla_f32_peak": flops / med / peak}
  report.update({
      "xla_f32_matmul_peak_gflops": peak / 1e9, "model_gflops_per_step": flops / 1e9,
      "results": summary, "tokens_per_second_ratio_median": statistics.median(ratios),
      "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(ratios)})
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  sys.exit(main())
