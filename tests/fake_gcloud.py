#!/usr/bin/env python3
"""Stand-ins for ``gcloud`` and, on the fake TPU VMs, ``uv`` and ``curl``: ``fake_gcloud.py TOOL
ARGS...`` (the test puts shims named gcloud/uv/curl on PATH).

gcloud follows the documented queued-resource and node life cycle, kept in $FAKE_GCLOUD_ROOT:
- ``queued-resources create``: ACCEPTED, WAITING_FOR_RESOURCES (``capacity=N`` reads), then
  PROVISIONING, then ACTIVE with its nodes READY. Each node is a fresh VM: ``workers=K`` folders
  (its hosts' home directories) under vm/NODE/; ``tpu-vm ssh`` runs the command there with bash,
  ``tpu-vm scp`` copies to/from them, ``storage cat/cp`` read a bucket under gcs/.
- a spot preemption (``preempt=N``: the first N runs, once they logged a training step): SIGTERM
  to each worker's run (a VM shutdown), the run gets to save, then the VMs are gone: the nodes
  read PREEMPTED, ssh exits 255, and the queued resource reads ACTIVE once more (state reads lag),
  then SUSPENDING, then SUSPENDED. ``maintenance=N``: the SIGTERM only; the slice stays up.
- ``delete``: DELETING for one read, then NOT_FOUND; the VMs and what runs on them are gone.
- ``flaky=N``: the first N describe calls fail with a transient API error (not NOT_FOUND);
  ``ssh-drops=N``: once a run started, N ssh calls to it fail with 255 (a dropped connection).
Every call is recorded as a JSON line in $FAKE_GCLOUD_ROOT/calls.jsonl ($FAKE_GCLOUD_SCENARIO
holds the comma-separated options).

uv: ``--version``; ``venv DIR`` makes a venv whose python is this one (where bertjax is
installed); ``pip install`` checks that what it is asked to install exists, and records it.
curl: the uv installer script (it puts the uv shim in ~/.local/bin).
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ["FAKE_GCLOUD_ROOT"])
OPTIONS = dict(o.partition("=")[::2] for o in os.environ.get("FAKE_GCLOUD_SCENARIO", "").split(",")
               if o)
STEP_LINE = re.compile(r"step \d+/\d+ .*loss")


def option(name: str) -> int:
  return int(OPTIONS.get(name, 0))


def record(tool: str, argv: list[str]) -> None:
  with open(ROOT / "calls.jsonl", "a") as f:
    f.write(json.dumps([tool, *argv]) + "\n")


def load() -> dict:
  path = ROOT / "state.json"
  return json.loads(path.read_text()) if path.exists() else {
      "qr": None, "nodes": {}, "flaky": 0, "runs_preempted": 0, "maintenance": 0,
      "drops": 0}


def save(state: dict) -> None:
  (ROOT / "state.json.tmp").write_text(json.dumps(state))
  (ROOT / "state.json.tmp").replace(ROOT / "state.json")


def flag(argv, name):
  return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def workers(node: str) -> list[Path]:
  return sorted((ROOT / "vm" / node).glob("worker-*"), key=lambda p: int(p.name.split("-")[1]))


def run_pids(node: str) -> list[int]:
  """The process groups of runs in progress on a node's workers."""
  pids = []
  for home in workers(node):
    w = home / "bertjax"
    if (w / "run.pid").exists() and not (w / "run.exit").exists():
      pid = int((w / "run.pid").read_text())
      try:
        os.kill(pid, 0)
        pids.append(pid)
      except ProcessLookupError:
        pass
  return pids


def sigterm_runs(state) -> None:
  """A VM shutdown: SIGTERM to every run, a grace period to save in (the run's own time)."""
  pids = [p for node in state["nodes"] for p in run_pids(node)]
  for pid in pids:
    os.killpg(pid, signal.SIGTERM)
  deadline = time.time() + 120
  for pid in pids:
    while time.time() < deadline:
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        break
      time.sleep(0.1)


def kill_runs(nodes) -> None:
  for node in nodes:
    for pid in run_pids(node):
      try:
        os.killpg(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def maybe_interrupt(state) -> bool:
  """Deliver a scheduled maintenance SIGTERM, then a preemption, once the first node's run logged
  a step; True when the VMs are gone."""
  node = next(iter(state["nodes"]), None)
  if node is None or not run_pids(node):
    return False
  log = workers(node)[0] / "bertjax" / "logs" / "current.log"
  if not (log.exists() and STEP_LINE.search(log.read_text())):
    return False
  if state["maintenance"] < option("maintenance"):  # a host event: the slice stays up
    state["maintenance"] += 1
    sigterm_runs(state)
    return False
  if state["runs_preempted"] < option("preempt"):
    state["runs_preempted"] += 1
    sigterm_runs(state)
    for n in state["nodes"].values():
      n["state"] = "PREEMPTED"
    state["qr"]["queue"] = ["ACTIVE", "SUSPENDING"]  # reads lag the event
    state["qr"]["state"] = "SUSPENDED"
    return True
  return False


def queued_resources(verb: str, argv: list[str], state: dict) -> int:
  name = argv[4] if len(argv) > 4 else None
  qr = state["qr"]
  if verb == "create":
    if qr is not None:
      print(f"ERROR: (gcloud.compute.tpus.queued-resources.create) ALREADY_EXISTS: {name}",
            file=sys.stderr)
      return 1
    count = int(flag(argv, "node-count") or 1)
    nodes = ([flag(argv, "node-id")] if count == 1
             else [f"{flag(argv, 'node-prefix')}-{i}" for i in range(count)])
    state["qr"] = {"name": name, "state": "ACTIVE", "nodes": nodes,
                   "accelerator": flag(argv, "accelerator-type"),
                   "queue": ["ACCEPTED"] + ["WAITING_FOR_RESOURCES"] * option("capacity")
                   + ["PROVISIONING"]}
    return 0
  if qr is None or qr["name"] != name:
    print(f"ERROR: (gcloud.compute.tpus.queued-resources.{verb}) NOT_FOUND: Resource "
          f"'projects/p/locations/z/queuedResources/{name}' was not found", file=sys.stderr)
    return 1
  if verb == "describe":
    if state["flaky"] < option("flaky"):
      state["flaky"] += 1
      print("ERROR: (gcloud.compute.tpus.queued-resources.describe) UNAVAILABLE: The service "
            "is currently unavailable.", file=sys.stderr)
      return 1
    current = qr["queue"].pop(0) if qr["queue"] else qr["state"]
    if current == "DELETING" and not qr["queue"]:
      state["qr"] = None  # gone after this read
    elif current == "ACTIVE" and not state["nodes"]:  # provisioned: fresh VMs
      for node in qr["nodes"]:
        shutil.rmtree(ROOT / "vm" / node, ignore_errors=True)
        for w in range(option("workers") or 1):
          (ROOT / "vm" / node / f"worker-{w}").mkdir(parents=True)
        state["nodes"][node] = {"state": "READY", "workers": option("workers") or 1}
    print(current)
    return 0
  if verb == "delete":
    kill_runs(state["nodes"])
    state["nodes"] = {}
    qr["queue"], qr["state"] = ["DELETING"], "DELETING"
    return 0
  print(f"fake gcloud: unknown queued-resources verb {verb}", file=sys.stderr)
  return 2


def tpu_vm(verb: str, argv: list[str], state: dict) -> int:
  words = [a for a in argv if not a.startswith("--")]
  if verb == "describe":
    node = state["nodes"].get(words[4])
    if node is None:
      print(f"ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: {words[4]}",
            file=sys.stderr)
      return 1
    print(json.dumps({"state": node["state"], "networkEndpoints": [{}] * node["workers"]}))
    return 0
  if verb == "ssh":
    name, command = words[4], flag(argv, "command")
    if maybe_interrupt(state) or state["nodes"].get(name, {}).get("state") != "READY":
      print(f"ssh: connect to host {name}: Connection timed out", file=sys.stderr)
      return 255
    homes = workers(name)
    if flag(argv, "worker") != "all":
      homes = [homes[int(flag(argv, "worker"))]]
    if run_pids(name) and state["drops"] < option("ssh-drops"):
      state["drops"] += 1
      print("Connection to host closed by remote host.", file=sys.stderr)
      return 255
    return homes, command  # run after the state is saved and unlocked
  if verb == "scp":
    src, dst = words[4], words[5]
    node = (dst if ":" in dst else src).split(":")[0]
    if state["nodes"].get(node, {}).get("state") != "READY":
      return 255
    homes = workers(node)
    if flag(argv, "worker") not in (None, "all"):
      homes = [homes[int(flag(argv, "worker"))]]
    for home in homes:
      if ":" in dst:  # upload
        target = home / dst.split(":", 1)[1].removeprefix("~/")
        shutil.copy(src, target / Path(src).name if dst.endswith("/") else target)
      else:
        source = home / src.split(":", 1)[1].removeprefix("~/")
        if not source.exists():
          print(f"scp: {src}: No such file or directory", file=sys.stderr)
          return 1
        shutil.copytree(source, Path(dst) / source.name, dirs_exist_ok=True)
    return 0
  print(f"fake gcloud: unknown tpu-vm verb {verb}", file=sys.stderr)
  return 2


def storage(verb: str, argv: list[str]) -> int:
  words = [a for a in argv if not a.startswith("--")]
  path = ROOT / "gcs" / words[2].removeprefix("gs://")
  if not path.is_file():
    print(f"ERROR: (gcloud.storage.{verb}) The following URLs matched no objects or files:\n"
          f"-{words[2]}", file=sys.stderr)
    return 1
  if verb == "cat":
    sys.stdout.write(path.read_text())
  else:  # cp gs://... DEST
    dest = Path(os.path.expanduser(words[3]))
    shutil.copy(path, dest / path.name if dest.is_dir() else dest)
  return 0


def gcloud(argv: list[str]) -> int:
  record("gcloud", argv)
  words = [a for a in argv if not a.startswith("--")]
  if words[:1] == ["storage"]:
    return storage(words[1], argv)
  with open(ROOT / "state.lock", "w") as lock:  # ssh_all runs one gcloud per node at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    state = load()
    if words[:3] == ["compute", "tpus", "queued-resources"]:
      result = queued_resources(words[3], argv, state)
    elif words[:3] == ["compute", "tpus", "tpu-vm"]:
      result = tpu_vm(words[3], argv, state)
    else:
      print(f"fake gcloud: unknown command {argv}", file=sys.stderr)
      result = 2
    save(state)
  if isinstance(result, int):
    return result
  homes, command = result  # ssh: the command on each worker, as its user, in its home
  code = 0
  for home in homes:
    out = subprocess.run(["bash", "-c", command], cwd=home, env={**os.environ, "HOME": str(home)})
    code = code or out.returncode
  return code


def uv(argv: list[str]) -> int:
  record("uv", argv)
  if argv == ["--version"]:
    print("uv 0.13.9 (fake)")
    return 0
  if argv[0] == "venv":
    venv = Path(argv[-1])
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"  # this interpreter, with its site-packages
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (venv / "bin" / "activate").write_text(
        f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return 0
  if argv[:2] == ["pip", "install"]:
    for i, a in enumerate(argv):
      if a == "-r" and not Path(argv[i + 1]).is_file():
        print(f"error: File not found: `{argv[i + 1]}`", file=sys.stderr)
        return 2
    target = argv[-1]
    if "-r" not in argv and not target.startswith(("git+", "http")) and not Path(target).exists():
      print(f"error: Distribution not found at: {target}", file=sys.stderr)
      return 2
    return 0
  return 2


def curl(argv: list[str]) -> int:
  record("curl", argv)
  shim = Path(os.environ["FAKE_GCLOUD_TOOLS"]) / "uv"
  print(f'mkdir -p "$HOME/.local/bin" && cp {shim} "$HOME/.local/bin/uv"')
  return 0


if __name__ == "__main__":
  tool, argv = sys.argv[1], sys.argv[2:]
  sys.exit({"gcloud": gcloud, "uv": uv, "curl": curl}[tool](argv))
