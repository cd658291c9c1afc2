"""One process of a 2-process fine-tuning run (``jax.distributed`` on 127.0.0.1, gloo):
``mp_finetune.py PROCESS_ID PORT TASK_YAML key=value ...``."""

import sys


def main():
  process_id, port = int(sys.argv[1]), sys.argv[2]
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  from bertjax.config import finetune_config
  from bertjax.tasks.finetune import finetune

  finetune(finetune_config(sys.argv[3], sys.argv[4:]), quiet=True)
  jax.distributed.shutdown()


if __name__ == "__main__":  # grain spawns workers that re-import __main__
  main()
