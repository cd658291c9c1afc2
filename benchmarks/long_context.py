"""ModernBERT-tiny-wide forward at 1024 / 2048 / 4096 / 8192 tokens, with alternating local
attention (+-64, global every 3rd layer) and with every layer global: time per token and the
peak memory of XLA's compiled plan (arguments + outputs + temporaries).

  python benchmarks/long_context.py [--lengths 1024 2048 4096 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax.config import model_config
from bertjax.models import Model


def tiny_wide(length: int, local: bool):
  return model_config({
      "family": "modernbert", "vocab_size": 1024, "pad_token_id": 0, "hidden_size": 384,
      "num_layers": 6, "num_heads": 6, "intermediate_size": 576, "max_position_embeddings": length,
      "local_window": 64 if local else None, "global_every": 3, "heads": []})


def measure(length: int, local: bool, repeats: int) -> dict:
  cfg = tiny_wide(length, local)
  graphdef, state = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 1024, (1, length)))
  fn = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i).last_hidden_state)
  compiled = fn.lower(state, ids).compile()
  mem = compiled.memory_analysis()
  peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  compiled(state, ids).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    compiled(state, ids).block_until_ready()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"length": length, "local_attention": local, "seconds": med,
          "us_per_token": 1e6 * med / length, "peak_mib": peak / 2**20}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  rows = []
  for length in args.lengths:
    for local in (True, False):
      rows.append(measure(length, local, args.repeats))
      print(json.dumps(rows[-1]), flush=True)
  print(f"{'tokens':>7} {'local us/tok':>13} {'global us/tok':>14} {'local MiB':>10} {'global MiB':>11}")
  for length in args.lengths:
    a = next(r for r in rows if r["length"] == length and r["local_attention"])
    b = next(r for r in rows if r["length"] == length and not r["local_attention"])
    print(f"{length:>7} {a['us_per_token']:>13.1f} {b['us_per_token']:>14.1f} "
          f"{a['peak_mib']:>10.0f} {b['peak_mib']:>11.0f}")


if __name__ == "__main__":
  main()
