"""One process of a 2-process pretraining run (``jax.distributed`` on 127.0.0.1, gloo)."""

import sys


def main():
  process_id, port, run_dir, corpus = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  from pathlib import Path

  from pretrain_helpers import config

  from bertjax.train.pretrain import pretrain

  pretrain(config(Path(run_dir), Path(corpus), *sys.argv[5:]), quiet=True)
  jax.distributed.shutdown()


if __name__ == "__main__":  # grain spawns workers that re-import __main__
  main()
