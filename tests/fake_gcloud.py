#!/usr/bin/env python3
"""A stand-in for ``gcloud`` (put on PATH as ``gcloud``): records every call as a JSON line in
$FAKE_GCLOUD_LOG and keeps the queued resource's state in $FAKE_GCLOUD_STATE. The scenario
($FAKE_GCLOUD_SCENARIO) decides what a training run does: ``ok``; ``preempt-once`` (the first run
loses the slice: ssh exits 255); ``preempt-always``; ``fail`` (the command fails, the slice stays
up); ``sigterm-once`` (the first run is SIGTERM'd -- a maintenance event -- saves and exits 75,
the slice stays ACTIVE); ``notice-once`` (the first run saves on the preemption notice and exits
75, then the slice is SUSPENDED)."""

import json
import os
import sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(argv) + "\n")
state_file = Path(os.environ["FAKE_GCLOUD_STATE"])
state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": 0}
scenario = os.environ.get("FAKE_GCLOUD_SCENARIO", "ok")


def save():
  state_file.write_text(json.dumps(state))


words = [a for a in argv if not a.startswith("--")]
if words[:3] == ["compute", "tpus", "queued-resources"]:
  verb = words[3]
  if verb == "create":
    state["qr"] = "WAITING_FOR_RESOURCES"  # ACTIVE at the next describe
  elif verb == "describe":
    if "qr" not in state:
      print("ERROR: NOT_FOUND", file=sys.stderr)
      sys.exit(1)
    print(state["qr"])
    if state["qr"] == "WAITING_FOR_RESOURCES":
      state["qr"] = "ACTIVE"
  elif verb == "delete":
    state.pop("qr", None)
  save()
  sys.exit(0)
if words[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  command = next(a for a in argv if a.startswith("--command="))
  if state.get("qr") != "ACTIVE":
    sys.exit(255)
  if "bertjax" in command and "pip install" not in command:
    state["runs"] += 1
    save()
    if scenario == "preempt-always" or (scenario == "preempt-once" and state["runs"] == 1):
      state["qr"] = "SUSPENDED"
      save()
      sys.exit(255)
    if scenario == "fail":
      sys.exit(1)
    if scenario in ("sigterm-once", "notice-once") and state["runs"] == 1:
      if scenario == "notice-once":
        state["qr"] = "SUSPENDED"
        save()
      sys.exit(75)
  sys.exit(0)
if words[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  Path(words[5]).write_text("worker log\n") if ":" not in words[5] else None
  sys.exit(0)
print(f"fake gcloud: unknown command {argv}", file=sys.stderr)
sys.exit(2)
