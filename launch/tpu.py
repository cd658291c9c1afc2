#!/usr/bin/env python3
"""Cloud TPU VM launcher: one tool for a slice's life around a bertjax run.

  python launch/tpu.py --project P --zone Z --name N create --accelerator v5litepod-16 [--spot]
  python launch/tpu.py ... setup --source git+https://github.com/ORG/bertjax.git@COMMIT
  python launch/tpu.py ... run -- bertjax pretrain bert-base-pretrain run_dir=gs://B/runs/base ...
  python launch/tpu.py ... babysit --accelerator v5litepod-16 --spot --source SRC -- bertjax ...
  python launch/tpu.py ... status | logs [--out DIR] | delete

Slices are queued resources (``gcloud compute tpus queued-resources``): on-demand, ``--spot`` or
``--reserved``; ``--node-count N`` asks for N slices (multislice: nodes NAME-0 .. NAME-<N-1>, run
with ``mesh.slices=N``). Everything on a worker lives in ``~/bertjax``:

- ``setup`` brings its own Python 3.11 (uv; the TPU VM images are Ubuntu 22.04 with Python 3.10),
  installs the pinned versions of ``launch/requirements-tpu.txt`` (the same jax/libtpu on every
  worker and every re-created slice) and then bertjax from ``--source`` without dependencies: a
  git URL at a commit, a local wheel (copied to each worker) or a ``gs://`` wheel (copied there
  with ``gcloud storage cp``).
- ``run`` stops what an earlier run left on each worker (its process group, processes holding
  the TPU, ``/tmp/libtpu_lockfile``), starts the command detached from SSH (setsid/nohup; output
  in ``~/bertjax/logs/current.log``, exit code in ``~/bertjax/run.exit``) on every worker, and
  follows worker 0's log until the command ends; a dropped connection changes nothing (the poll
  is retried). ``--detach`` returns once it started. bertjax processes reach each other through
  ``--distributed``; one that dies ends the others after ``--heartbeat-timeout`` seconds.
- ``babysit`` runs a command to completion through preemptions. It decides from the run's
  ``status.json`` (``run_dir=``; bertjax writes it locally or on gs://) and the exit code
  (75 = saved on SIGTERM, not done), and from the queued resource's and the nodes' states, each
  read with retries (a failed ``describe`` is never taken for NOT_FOUND): waiting states
  (CREATING, ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING) are waited on, never deleted;
  SUSPENDING, SUSPENDED, FAILED or a PREEMPTED/TERMINATED node mean delete and re-create (then
  setup and the same command: bertjax resumes from the run folder's latest checkpoint); a run
  that saved on SIGTERM on a slice that is still up runs again there; ``completed`` ends it; a
  run that failed on a slice that stays healthy is not retried. Every wait is bounded
  (``--wait-limit``, ``--retries``, ``--api-retries``).
- ``logs`` copies ``~/bertjax/logs`` from every worker of every node.

``--dry-run`` prints the gcloud commands instead of running them. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
ALIASES = {"v5e": "v5litepod"}  # what people say -> what the TPU API calls it
QR_WAITING = {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING"}
QR_LOST = {"SUSPENDING", "SUSPENDED", "FAILED"}
NODE_LOST = {"PREEMPTED", "TERMINATED", "STOPPING", "STOPPED"}
EXIT_PREEMPTED = 75  # bertjax pretrain/finetune: saved on SIGTERM, not done (bertjax/errors.py)
SSH_LOST = 255  # ssh: the connection failed or dropped
UV_VERSION = "0.13.9"
PYTHON = "3.11"
LOCK = Path(__file__).resolve().with_name("requirements-tpu.txt")
MARK = "@@bertjax"


def accelerator_type(name: str) -> str:
  """``v5e-16`` -> ``v5litepod-16`` (the TPU API's name); an unknown generation is an error."""
  generation, _, chips = name.partition("-")
  generation = ALIASES.get(generation, generation)
  if generation not in RUNTIMES or not chips.isdigit():  # (v2/v3: no image with a usable Python)
    raise SystemExit(f"launch/tpu.py: --accelerator {name}: expected GENERATION-CHIPS with a "
                     f"generation of {', '.join(sorted(RUNTIMES))} (or v5e), e.g. v5litepod-16")
  return f"{generation}-{chips}"


def say(message: str) -> None:
  print(f"launch/tpu.py: {message}", file=sys.stderr, flush=True)


# -- what runs on each worker ------------------------------------------------------------------
def install_source(source: str) -> tuple[str, str | None]:
  """``--source`` -> (what uv installs on the worker, a local file to copy there first)."""
  if source.startswith("git+"):
    url, _, rev = source.rpartition("@")
    if not rev or "/" in rev or not url.startswith("git+") or url.endswith(":"):
      raise SystemExit(f"launch/tpu.py setup: --source {source}: pin a commit (git+URL@COMMIT) "
                       "so every worker and every re-created slice installs the same code")
    return source, None
  if source.startswith("gs://"):
    if not source.endswith(".whl"):
      raise SystemExit(f"launch/tpu.py setup: --source {source}: a gs:// source must be a wheel")
    return "$HOME/bertjax/" + source.rsplit("/", 1)[-1], None
  if source.startswith(("http://", "https://")) or re.fullmatch(r"bertjax==[\w.]+", source):
    return source, None
  path = Path(source)
  if path.suffix == ".whl":
    if not path.is_file():
      raise SystemExit(f"launch/tpu.py setup: --source {source}: no such wheel")
    return f"$HOME/bertjax/{path.name}", str(path)
  raise SystemExit(f"launch/tpu.py setup: --source {source}: expected git+URL@COMMIT, a wheel "
                   "(local path, gs:// or https://) or bertjax==VERSION")


def setup_script(source: str) -> str:
  """Python 3.11 by uv, the lock file's versions, then bertjax itself (no dependencies)."""
  target, _ = install_source(source)
  fetch = (f"gcloud storage cp {shlex.quote(source)} \"$W/\"\n" if source.startswith("gs://")
           else "")
  return f"""set -euo pipefail
W="$HOME/bertjax"; mkdir -p "$W/logs"; cd "$W"
for f in "$HOME"/bertjax-upload/*; do [ -e "$f" ] && mv -f "$f" "$W/"; done
export PATH="$HOME/.local/bin:$PATH"
if [ "$(uv --version 2>/dev/null | cut -d' ' -f2)" != "{UV_VERSION}" ]; then
  curl -LsSf https://astral.sh/uv/{UV_VERSION}/install.sh | env UV_NO_MODIFY_PATH=1 sh
fi
# the image's Python may be older than {PYTHON} (Ubuntu 22.04: 3.10); uv fetches one then
uv venv --allow-existing --python {PYTHON} "$W/venv"
uv pip install --python "$W/venv/bin/python" -r "$W/requirements-tpu.txt"
{fetch}uv pip install --python "$W/venv/bin/python" --no-deps --reinstall-package bertjax "{target}"
"$W/venv/bin/python" -c "import bertjax, jax; print('bertjax', bertjax.__version__, 'jax', jax.__version__, 'on', __import__('platform').python_version())"
"""


def start_script(command: str) -> str:
  """Stop leftovers, then ``command`` detached from SSH, its exit code kept in run.exit."""
  return f"""set -u
W="$HOME/bertjax"
[ -x "$W/venv/bin/python" ] || {{ echo "bertjax is not set up on $(hostname): run setup" >&2; exit 3; }}
cd "$W"
# an earlier run's process group, whatever holds the TPU, and libtpu's lock file
if [ -f run.pid ] && kill -0 "$(cat run.pid)" 2>/dev/null; then
  pid=$(cat run.pid); kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null
fi
if command -v lsof >/dev/null 2>&1; then
  holders=$(sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u)
  [ -n "$holders" ] && sudo -n kill -9 $holders
fi
sudo -n rm -f /tmp/libtpu_lockfile 2>/dev/null || rm -f /tmp/libtpu_lockfile 2>/dev/null
rm -f run.exit run.pid
[ -f logs/current.log ] && mv logs/current.log "logs/$(date -u +%Y%m%dT%H%M%SZ).log"
cat > run.sh <<'BERTJAX_RUN'
echo $$ > "$HOME/bertjax/run.pid.tmp" && mv "$HOME/bertjax/run.pid.tmp" "$HOME/bertjax/run.pid"
. "$HOME/bertjax/venv/bin/activate"
{command} &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM  # a VM's SIGTERM reaches the run; this shell stays
while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || break; done
echo "$code" > "$HOME/bertjax/run.exit.tmp" && mv "$HOME/bertjax/run.exit.tmp" "$HOME/bertjax/run.exit"
BERTJAX_RUN
{{ echo "=== $(date -u +%FT%TZ) $(hostname)"; sed -n 3p run.sh; }} > logs/current.log
setsid nohup bash run.sh >> logs/current.log 2>&1 < /dev/null &
for _ in $(seq 100); do [ -f run.pid ] && break; sleep 0.1; done
echo "$(hostname): started (pid $(cat run.pid 2>/dev/null || echo '?'))"
"""


def poll_script(offset: int) -> str:
  """Worker 0's log from byte ``offset`` on, then ``@@bertjax SIZE running|dead|exit CODE``."""
  return f"""cd "$HOME/bertjax" 2>/dev/null || exit 3
size=$(stat -c %s logs/current.log 2>/dev/null || echo 0)
[ "$size" -gt {offset} ] && tail -c +{offset + 1} logs/current.log | head -c $((size - {offset}))
if [ -f run.exit ]; then s="exit $(cat run.exit)"
elif kill -0 "$(cat run.pid 2>/dev/null)" 2>/dev/null; then s=running; else s=dead; fi
printf '\\n{MARK} %s %s\\n' "$size" "$s"
"""


class LostSlice(Exception):
  """The slice is gone (preempted, suspended, failed): delete and re-create it."""


class Launcher:

  def __init__(self, args):
    self.args, self.dry = args, args.dry_run

  # -- gcloud --------------------------------------------------------------------------------
  def gcloud(self, *argv: str, check: bool = True, capture: bool = False,
             zonal: bool = True) -> subprocess.CompletedProcess:
    cmd = ["gcloud", *argv, f"--project={self.args.project}"]
    cmd += [f"--zone={self.args.zone}"] if zonal else []
    if self.dry:
      print(shlex.join(cmd))
      return subprocess.CompletedProcess(cmd, 0, self._dry_output(argv) if capture else "", "")
    out = subprocess.run(cmd, text=True, capture_output=capture)
    if check and out.returncode:
      raise SystemExit(f"launch/tpu.py: {shlex.join(cmd[:6])} ... failed (exit {out.returncode})"
                       + (f": {_last_line(out.stderr)}" if capture and out.stderr.strip() else ""))
    return out

  @staticmethod
  def _dry_output(argv) -> str:  # what a healthy slice answers, so --dry-run walks the happy path
    if "queued-resources" in argv:
      return "ACTIVE\n"
    if "describe" in argv:
      return json.dumps({"state": "READY", "networkEndpoints": [{}]})
    return f"\n{MARK} 0 exit 0\n"

  def sleep(self, seconds: float) -> None:
    if not self.dry:
      time.sleep(seconds)

  @property
  def qr(self) -> str:
    return f"{self.args.name}-qr"

  def nodes(self) -> list[str]:
    n = self.args.node_count
    return [self.args.name] if n == 1 else [f"{self.args.name}-{i}" for i in range(n)]

  def describe(self, *argv: str, zonal: bool = True) -> str | None:
    """A read's stdout; None when the resource does not exist. Any other failure (an API hiccup,
    a quota error) is retried ``--api-retries`` times and is never taken for NOT_FOUND."""
    last = ""
    for attempt in range(self.args.api_retries + 1):
      out = self.gcloud(*argv, check=False, capture=True, zonal=zonal)
      if out.returncode == 0:
        return out.stdout
      if "NOT_FOUND" in out.stderr or "matched no objects" in out.stderr:
        return None
      last = _last_line(out.stderr) or f"exit {out.returncode}"
      if attempt < self.args.api_retries:
        say(f"gcloud {' '.join(argv[:4])} failed ({last}); retrying")
        self.sleep(min(self.args.poll * 2**attempt, 300))
    raise SystemExit(f"launch/tpu.py: gcloud {' '.join(argv[:5])} failed "
                     f"{self.args.api_retries + 1} times: {last}")

  def qr_state(self) -> str:
    out = self.describe("compute", "tpus", "queued-resources", "describe", self.qr,
                        "--format=value(state.state)")
    return "NOT_FOUND" if out is None else out.strip() or "UNKNOWN"

  def node(self, name: str) -> tuple[str, int]:
    """(state, workers) of a node; ("NOT_FOUND", 0) when it does not exist."""
    out = self.describe("compute", "tpus", "tpu-vm", "describe", name, "--format=json")
    if out is None:
      return "NOT_FOUND", 0
    info = json.loads(out)
    return info.get("state", "UNKNOWN"), len(info.get("networkEndpoints") or [None])

  def slice_state(self) -> tuple[str, str]:
    """(absent | deleting | waiting | lost | ready, what was read)."""
    qr = self.qr_state()
    if qr == "NOT_FOUND":
      return "absent", f"{self.qr} NOT_FOUND"
    if qr == "DELETING":
      return "deleting", f"{self.qr} DELETING"
    if qr in QR_LOST:
      return "lost", f"{self.qr} {qr}"
    if qr != "ACTIVE":  # the waiting states, and any state this tool does not know: wait
      return "waiting", f"{self.qr} {qr}"
    for name in self.nodes():  # the queued resource's state lags its nodes'
      state, _ = self.node(name)
      if state in NODE_LOST or state == "NOT_FOUND":
        return "lost", f"node {name} {state}"
      if state != "READY":
        return "waiting", f"node {name} {state}"
    return "ready", f"{self.qr} ACTIVE"

  def wait_ready(self) -> None:
    """Until the slice is ACTIVE with every node READY; waiting states are waited on (bounded by
    ``--wait-limit``); a lost slice raises ``LostSlice``; an absent one is an error."""
    waited, last = 0.0, None
    while True:
      kind, detail = self.slice_state()
      if kind == "ready":
        return
      if kind == "lost":
        raise LostSlice(detail)
      if kind == "absent":
        raise SystemExit(f"launch/tpu.py: {detail}: create it first")
      if waited >= self.args.wait_limit:
        raise SystemExit(f"launch/tpu.py: {self.qr} not ready after {waited:.0f} s ({detail})")
      if detail != last:
        say(f"{detail}; waiting")
        last = detail
      self.sleep(self.args.poll)
      waited += max(self.args.poll, 1e-3)

  def wait_gone(self) -> None:
    waited = 0.0
    while (kind := self.slice_state()[0]) != "absent":
      if waited >= self.args.wait_limit:
        raise SystemExit(f"launch/tpu.py: {self.qr} still there after {waited:.0f} s ({kind})")
      self.sleep(self.args.poll)
      waited += max(self.args.poll, 1e-3)

  def ssh(self, node: str, command: str, worker: str = "all",
          capture: bool = False) -> subprocess.CompletedProcess:
    return self.gcloud("compute", "tpus", "tpu-vm", "ssh", node, f"--worker={worker}",
                       f"--command={command}", check=False, capture=capture)

  def ssh_all(self, command: str) -> int:
    """``command`` on every worker of every node (the nodes concurrently) -> first failure."""
    if self.dry:
      return next((c for c in [self.ssh(n, command).returncode for n in self.nodes()] if c), 0)
    procs = [subprocess.Popen(["gcloud", "compute", "tpus", "tpu-vm", "ssh", node,
                               "--worker=all", f"--command={command}",
                               f"--project={self.args.project}", f"--zone={self.args.zone}"])
             for node in self.nodes()]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)

  # -- subcommands ---------------------------------------------------------------------------
  def create(self, wait: bool = True) -> None:
    a = self.args
    if not a.accelerator:
      raise SystemExit("launch/tpu.py create: --accelerator is required (e.g. v5litepod-16)")
    accelerator = accelerator_type(a.accelerator)
    if accelerator != a.accelerator:
      say(f"--accelerator {a.accelerator} is {accelerator} to the TPU API")
    version = a.runtime_version or RUNTIMES[accelerator.split("-")[0]]
    argv = ["compute", "tpus", "queued-resources", "create", self.qr,
            f"--accelerator-type={accelerator}", f"--runtime-version={version}"]
    argv += ([f"--node-id={a.name}"] if a.node_count == 1
             else [f"--node-count={a.node_count}", f"--node-prefix={a.name}"])
    argv += ["--spot"] if a.spot else ["--reserved"] if a.reserved else []
    self.gcloud(*argv)
    if wait:
      try:
        self.wait_ready()
      except LostSlice as e:
        raise SystemExit(f"launch/tpu.py: {e}") from None

  def setup(self) -> None:
    src = self.args.source
    if not src:
      raise SystemExit("launch/tpu.py setup: --source is required (git+URL@COMMIT or a wheel)")
    script = setup_script(src)
    _, upload = install_source(src)
    for node in self.nodes():  # the lock file (and a local wheel) to every worker
      self.ssh(node, "mkdir -p ~/bertjax-upload")
      for path in (str(LOCK), upload) if upload else (str(LOCK),):
        self.gcloud("compute", "tpus", "tpu-vm", "scp", path, f"{node}:~/bertjax-upload/",
                    "--worker=all")
    if code := self.ssh_all(script):
      raise SystemExit(f"launch/tpu.py setup: the install failed on a worker (exit {code})")

  def start(self, command: list[str]) -> None:
    if not command:
      raise SystemExit("launch/tpu.py run: give the command after --")
    if command[:2] in (["bertjax", "pretrain"], ["bertjax", "finetune"]) and \
        "--distributed" not in command:
      command = command[:2] + ["--distributed"] + command[2:]
    if code := self.ssh_all(start_script(shlex.join(command))):
      raise SystemExit(f"launch/tpu.py run: starting the command failed (exit {code})")

  def follow(self) -> int | None:
    """Worker 0's log as it grows, until the command ends there -> its exit code; None when the
    slice was lost meanwhile. A failed poll (a dropped connection) is retried: the run goes on
    detached."""
    node, offset, failures = self.nodes()[0], 0, 0
    while True:
      out = self.ssh(node, poll_script(offset), worker="0", capture=True)
      head, _, mark = out.stdout.rpartition(f"\n{MARK} ")
      if out.returncode == 0 and mark:
        failures = 0
        size, state = mark.split(None, 1)
        sys.stdout.write(head)
        sys.stdout.flush()
        offset = max(offset, int(size))
        state = state.strip()
        if state.startswith("exit "):
          return int(state.split()[1])
        if state == "dead":  # killed with its wrapper (OOM killer, kill -9): no exit code
          say(f"the command on {node} worker 0 died without an exit code")
          return 137
      else:
        failures += 1
        kind, detail = self.slice_state()
        if kind in ("lost", "absent"):
          say(f"{detail} while the command ran")
          return None
        if failures > self.args.ssh_retries:
          say(f"worker 0 of {node} unreachable {failures} times in a row ({detail}); taking "
              "the slice for lost")
          return None
        say(f"polling worker 0 of {node} failed (exit {out.returncode}); the command runs on "
            f"detached; retrying ({failures}/{self.args.ssh_retries})")
      self.sleep(self.args.poll)

  def run(self, command: list[str]) -> int | None:
    self.start(command)
    return 0 if self.args.detach else self.follow()

  def run_status(self, command: list[str]) -> dict | None:
    """The run folder's status.json (``run_dir=`` in the command), or None."""
    run_dir = next((w.split("=", 1)[1] for w in command if w.startswith("run_dir=")), None)
    if not run_dir:
      return None
    if run_dir.startswith("gs://"):
      out = self.describe("storage", "cat", f"{run_dir.rstrip('/')}/status.json", zonal=False)
    else:
      if self.slice_state()[0] != "ready":
        return None
      out = self.ssh(self.nodes()[0], f"cd ~/bertjax && cat {shlex.quote(run_dir)}/status.json",
                     worker="0", capture=True)
      out = out.stdout if out.returncode == 0 else None
    try:
      return json.loads(out) if out else None
    except json.JSONDecodeError:
      return None

  def outcome(self, command: list[str], code: int | None) -> str:
    """completed | preempted | failed | lost, from the status object and the exit code."""
    state = (self.run_status(command) or {}).get("state")
    if state == "completed" or (code == 0 and state in (None, "running")):
      return "completed"
    if code is None:
      return "lost"
    if code == EXIT_PREEMPTED or state == "preempted":
      return "preempted"
    return "failed"

  def healthy(self) -> bool:
    """Whether the slice stays ready over ``--settle`` reads (its state lags a preemption)."""
    for i in range(self.args.settle):
      if self.slice_state()[0] != "ready":
        return False
      if i + 1 < self.args.settle:
        self.sleep(self.args.poll)
    return True

  def babysit(self, command: list[str]) -> int:
    """Run to completion through preemptions (see the module docstring)."""
    a = self.args
    if not a.source or not a.accelerator:
      raise SystemExit("launch/tpu.py babysit: --accelerator and --source are required (a "
                       "re-created slice is created and set up again)")
    install_source(a.source)  # a bad source fails now, not after the slice arrived
    attempts, needs_setup, lost = 0, True, 0
    while True:
      kind, detail = self.slice_state()
      if kind == "lost":
        if lost >= a.retries:
          raise SystemExit(f"launch/tpu.py: gave up after {a.retries} re-creations ({detail})")
        wait = min(a.backoff * 2**lost, a.max_backoff)
        lost += 1
        say(f"{detail}: deleting it and re-creating in {wait:.0f} s")
        self.delete()
        self.sleep(wait)
        continue
      if kind == "absent":
        self.create(wait=False)
        needs_setup = True
        continue
      if kind in ("waiting", "deleting"):
        try:
          self.wait_ready() if kind == "waiting" else self.wait_gone()
        except LostSlice:
          pass
        continue
      if needs_setup:
        self.setup()
        needs_setup = False
      attempts += 1
      result = self.outcome(command, self.run(command))
      if result == "completed":
        say(f"done after {attempts} attempt(s)")
        return 0
      if result == "failed":
        if self.healthy():  # do not loop on a command that fails by itself
          raise SystemExit("launch/tpu.py: the command failed on a healthy slice; not retried "
                           "(see `logs`)")
        result = "lost"
      if attempts > a.retries:
        raise SystemExit(f"launch/tpu.py: gave up after {a.retries} retries ({result})")
      say(f"the run was {result} ({'saved on SIGTERM' if result == 'preempted' else 'slice'}); "
          f"running it again ({attempts}/{a.retries} retries)")

  def status(self) -> None:
    kind, detail = self.slice_state()
    print(f"{self.qr}: {kind} ({detail})")

  def logs(self) -> None:
    out = Path(self.args.out)
    for node in self.nodes():
      _, workers = self.node(node)
      for worker in range(workers):
        target = out / node / f"worker-{worker}"
        target.mkdir(parents=True, exist_ok=True)
        self.gcloud("compute", "tpus", "tpu-vm", "scp", "--recurse", f"{node}:~/bertjax/logs",
                    str(target), f"--worker={worker}", check=False)
    print(f"logs in {out}")

  def delete(self) -> None:
    self.gcloud("compute", "tpus", "queued-resources", "delete", self.qr, "--force", "--quiet")


def _last_line(text: str) -> str:
  lines = text.strip().splitlines()
  return lines[-1] if lines else ""


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

  def common(parser, default):  # before or after the subcommand, as people type them
    kw = lambda value: {"default": value if default else argparse.SUPPRESS}
    parser.add_argument("--project", **kw(None))
    parser.add_argument("--zone", **kw(None))
    parser.add_argument("--name", help="the slice (node) name; the queued resource is NAME-qr",
                        **kw(None))
    parser.add_argument("--node-count", type=int, help="slices (multislice: mesh.slices=N)",
                        **kw(1))
    parser.add_argument("--dry-run", action="store_true",
                        help="print the gcloud commands, run nothing", **kw(False))
    parser.add_argument("--poll", type=float, help="seconds between reads of a state or a log",
                        **kw(30.0))
    parser.add_argument("--wait-limit", type=float, help="seconds to wait for capacity or a "
                        "deletion before giving up", **kw(6 * 3600))
    parser.add_argument("--api-retries", type=int, help="retries of a failed gcloud read",
                        **kw(5))

  common(p, default=True)
  shared = argparse.ArgumentParser(add_help=False)
  common(shared, default=False)
  sub = p.add_subparsers(dest="cmd", required=True)
  add_parser = sub.add_parser
  sub.add_parser = lambda *a, **k: add_parser(*a, parents=[shared], **k)

  def slice_args(s):
    s.add_argument("--accelerator", help="v5litepod-16 (or v5e-16), v5p-64, v4-32, v6e-64 ...")
    s.add_argument("--runtime-version", help="default: the generation's TPU VM image")
    kind = s.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="spot capacity (preemptible)")
    kind.add_argument("--reserved", action="store_true", help="a reservation's capacity")

  def run_args(s):
    s.add_argument("--ssh-retries", type=int, default=10,
                   help="failed polls of worker 0 in a row before the slice counts as lost")
    s.add_argument("command", nargs=argparse.REMAINDER)

  slice_args(sub.add_parser("create", help="create the slice(s) and wait until ACTIVE"))
  s = sub.add_parser("setup", help="Python 3.11 + the lock file + bertjax on every worker")
  s.add_argument("--source", help="git+URL@COMMIT, a wheel (path, gs://, https://), "
                 "bertjax==VERSION")
  s = sub.add_parser("run", help="start a command detached on every worker; follow worker 0")
  s.add_argument("--detach", action="store_true", help="return once it started")
  run_args(s)
  s = sub.add_parser("babysit", help="create/setup/run; re-create and resume after preemption")
  slice_args(s)
  s.add_argument("--source", help="the source setup installs")
  s.add_argument("--retries", type=int, default=10, help="reruns and re-creations at most")
  s.add_argument("--backoff", type=float, default=60.0, help="first wait before re-creating "
                 "a lost slice, doubled each time")
  s.add_argument("--max-backoff", type=float, default=1800.0)
  s.add_argument("--settle", type=int, default=3, help="state reads a slice must stay ready "
                 "after a failure to count as healthy (its state lags a preemption)")
  s.set_defaults(detach=False)
  run_args(s)
  sub.add_parser("status", help="the queued resource's and its nodes' state")
  s = sub.add_parser("logs", help="copy ~/bertjax/logs of every worker of every node here")
  s.add_argument("--out", default="tpu-logs")
  sub.add_parser("delete", help="delete the queued resource and its slices")
  return p


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  missing = [f"--{k}" for k in ("project", "zone", "name") if not getattr(args, k)]
  if missing:
    raise SystemExit(f"launch/tpu.py: {', '.join(missing)} required")
  command = list(getattr(args, "command", None) or [])
  if command[:1] == ["--"]:
    command = command[1:]
  tpu = Launcher(args)
  if args.cmd == "babysit":
    return tpu.babysit(command)
  if args.cmd == "run":
    code = tpu.run(command)
    if code is None:
      raise SystemExit("launch/tpu.py run: the slice was lost while the command ran")
    return code
  getattr(tpu, args.cmd)()
  return 0


if __name__ == "__main__":
  sys.exit(main())
