"""ModernBERT-tiny-wide at 1024 / 2048 / 4096 / 8192 tokens (local attention +-64, global every
3rd layer): time per token and the peak memory of XLA's compiled plan (arguments + outputs +
temporaries), forward and forward+backward, with the global layers on the chunked flash-style
path (``attention_impl=auto`` today) and on XLA's fused dense path (``auto`` before it),
interleaved length by length.

  python benchmarks/long_context.py [--lengths 1024 2048 4096 8192] [--repeats 3] [--no-grad]
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
from bertjax.nn import attention


def tiny_wide(length: int, local: bool):
  return model_config({
      "family": "modernbert", "vocab_size": 1024, "pad_token_id": 0, "hidden_size": 384,
      "num_layers": 6, "num_heads": 6, "intermediate_size": 576, "max_position_embeddings": length,
      "local_window": 64 if local else None, "global_every": 3, "heads": []})


def measure(length: int, global_impl: str, grad: bool, repeats: int) -> dict:
  cfg = tiny_wide(length, local=True)
  graphdef, state = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 1024, (1, length)))
  forward = lambda s, i: nnx.merge(graphdef, s)(i).last_hidden_state
  if grad:
    fn = jax.jit(jax.grad(lambda s, i: (forward(s, i) ** 2).mean()))
  else:
    fn = jax.jit(forward)
  # auto takes flash from FLASH_MIN_LENGTH on; an unreachable threshold gives the dense path
  saved = attention.FLASH_MIN_LENGTH
  attention.FLASH_MIN_LENGTH = 0 if global_impl == "flash" else 1 << 30
  try:
    compiled = fn.lower(state, ids).compile()
  finally:
    attention.FLASH_MIN_LENGTH = saved
  mem = compiled.memory_analysis()
  peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  jax.block_until_ready(compiled(state, ids))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(state, ids))
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"length": length, "global": global_impl, "grad": grad, "seconds": med,
          "us_per_token": 1e6 * med / length, "us_range": [1e6 * min(times) / length,
                                                           1e6 * max(times) / length],
          "peak_mib": peak / 2**20}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-grad", action="store_true", help="forward only")
  args = p.parse_args()
  rows = []
  for grad in (False,) if args.no_grad else (False, True):
    for length in args.lengths:
      for impl in ("flash", "xla"):
        rows.append(measure(length, impl, grad, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
  for grad in (False,) if args.no_grad else (False, True):
    print("forward + backward" if grad else "forward")
    print(f"{'tokens':>7} {'flash us/tok':>13} {'dense us/tok':>13} {'flash MiB':>10} {'dense MiB':>10}")
    base = next(r for r in rows if r["grad"] == grad and r["global"] == "flash")
    for length in args.lengths:
      a, b = (next(r for r in rows if r["length"] == length and r["grad"] == grad
                   and r["global"] == impl) for impl in ("flash", "xla"))
      print(f"{length:>7} {a['us_per_token']:>13.1f} {b['us_per_token']:>13.1f} "
            f"{a['peak_mib']:>10.0f} {b['peak_mib']:>10.0f}   flash time/token "
            f"{a['us_per_token'] / base['us_per_token']:.2f}x the {base['length']}-token figure")


if __name__ == "__main__":
  main()
