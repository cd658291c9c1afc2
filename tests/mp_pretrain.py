"""One process of a 2-process pretraining run (``jax.distributed`` on 127.0.0.1, gloo):
``mp_pretrain.py PROCESS_ID PORT RUN_DIR CORPUS key=value ...``; prints the result as JSON and
exits as the CLI does (75 when saved on SIGTERM).

For the failure tests, in the environment: ``MP_SIGTERM_AT=N`` -- process 1 sends itself SIGTERM
after dispatching step N (a preemption notice on one host only); ``MP_KILL_AT=N`` -- process 1
dies there (SIGKILL: a lost VM); ``MP_STEP_SLEEP`` seconds after every step on both (keeps a
short run going while the notice travels); ``MP_HEARTBEAT`` the coordination heartbeat timeout."""

import json
import os
import signal
import sys
import time


def main():
  process_id, port, run_dir, corpus = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from bertjax.train import preemption

  preemption.initialize(int(os.environ.get("MP_HEARTBEAT", "100")),
                        coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                        process_id=process_id)
  from pathlib import Path

  from pretrain_helpers import config

  from bertjax.errors import EXIT_PREEMPTED
  from bertjax.train.pretrain import pretrain

  sleep = float(os.environ.get("MP_STEP_SLEEP", "0"))
  signals = {"MP_SIGTERM_AT": signal.SIGTERM, "MP_KILL_AT": signal.SIGKILL}

  def on_step(step):
    for name, sig in signals.items():
      if process_id == 1 and os.environ.get(name) == str(step):
        os.kill(os.getpid(), sig)
    time.sleep(sleep)

  result = pretrain(config(Path(run_dir), Path(corpus), *sys.argv[5:]), quiet=True,
                    on_step=on_step)
  print(json.dumps({"step": result["step"], "preempted": result["preempted"]}))
  jax.distributed.shutdown()
  return EXIT_PREEMPTED if result["preempted"] else 0


if __name__ == "__main__":  # grain spawns workers that re-import __main__
  sys.exit(main())
