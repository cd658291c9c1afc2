#!/usr/bin/env python3
"""Cloud TPU VM launcher: one tool for a slice's life around a bertjax run.

  python launch/tpu.py --project P --zone Z --name N create --accelerator v5p-64 [--spot]
  python launch/tpu.py ... setup --source git+https://github.com/OWNER/bertjax.git
  python launch/tpu.py ... run -- bertjax pretrain bert-large-pretrain run_dir=RUN
  python launch/tpu.py ... babysit --accelerator v5p-64 --spot --source SRC -- bertjax pretrain ...
  python launch/tpu.py ... status | logs [--out DIR] | delete

Slices are queued resources (``gcloud compute tpus queued-resources``): on-demand, ``--spot`` or
``--reserved``; ``--node-count N`` asks for N slices (multislice: nodes N-0 .. N-<n-1>, run with
``mesh.slices=N``). ``setup`` installs the same pinned bertjax on every worker (a git URL or a
wheel), ``run`` runs one command on every worker (``--worker=all``) with each worker's output
kept in ``~/bertjax-run.log`` there (``logs`` collects them). ``babysit`` creates the slice if it
is missing, sets it up, runs, and when the slice is preempted or lost re-creates it and runs the
same command again -- bertjax resumes from its run folder's latest checkpoint by itself -- with
bounded retries and exponential backoff; a command that fails on a healthy slice is not retried.
``--dry-run`` prints every gcloud command instead of running it. Standard library only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
ALIASES = {"v5e": "v5litepod"}  # what people say -> what the TPU API calls it
READY, GONE = "ACTIVE", ("SUSPENDED", "FAILED", "SUSPENDING", "DELETING", "NOT_FOUND")
LOG = "~/bertjax-run.log"
EXIT_PREEMPTED = 75  # bertjax pretrain/finetune: saved on SIGTERM, not done (bertjax/errors.py)


def accelerator_type(name: str) -> str:
  """``v5e-16`` -> ``v5litepod-16`` (the TPU API's name); an unknown generation is an error."""
  generation, _, chips = name.partition("-")
  generation = ALIASES.get(generation, generation)
  if generation not in RUNTIMES or not chips.isdigit():  # (v2/v3: no image with a usable Python)
    raise SystemExit(f"launch/tpu.py: --accelerator {name}: expected GENERATION-CHIPS with a "
                     f"generation of {', '.join(sorted(RUNTIMES))} (or v5e), e.g. v5litepod-16")
  return f"{generation}-{chips}"


class Launcher:

  def __init__(self, args):
    self.args, self.dry = args, args.dry_run

  # -- gcloud --------------------------------------------------------------------------------
  def gcloud(self, *argv: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = ["gcloud", *argv, f"--project={self.args.project}", f"--zone={self.args.zone}"]
    if self.dry:
      print(shlex.join(cmd))
      return subprocess.CompletedProcess(cmd, 0, "ACTIVE\n" if capture else "", "")
    out = subprocess.run(cmd, text=True, capture_output=capture)
    if check and out.returncode:
      raise SystemExit(f"launch/tpu.py: {shlex.join(cmd[:6])} ... failed (exit {out.returncode})"
                       + (f": {out.stderr.strip().splitlines()[-1]}" if capture and out.stderr.strip() else ""))
    return out

  @property
  def qr(self) -> str:
    return f"{self.args.name}-qr"

  def nodes(self) -> list[str]:
    n = self.args.node_count
    return [self.args.name] if n == 1 else [f"{self.args.name}-{i}" for i in range(n)]

  def state(self) -> str:
    """The queued resource's state (ACTIVE when the slices are up), NOT_FOUND if absent."""
    out = self.gcloud("compute", "tpus", "queued-resources", "describe", self.qr,
                      "--format=value(state.state)", check=False, capture=True)
    return (out.stdout.strip() or "NOT_FOUND") if out.returncode == 0 else "NOT_FOUND"

  # -- subcommands ---------------------------------------------------------------------------
  def create(self) -> None:
    a = self.args
    if not a.accelerator:
      raise SystemExit("launch/tpu.py create: --accelerator is required (e.g. v5p-64)")
    accelerator = accelerator_type(a.accelerator)
    if accelerator != a.accelerator:
      print(f"launch/tpu.py: --accelerator {a.accelerator} is {accelerator} to the TPU API",
            file=sys.stderr)
    version = a.runtime_version or RUNTIMES[accelerator.split("-")[0]]
    argv = ["compute", "tpus", "queued-resources", "create", self.qr,
            f"--accelerator-type={accelerator}", f"--runtime-version={version}"]
    argv += ([f"--node-id={a.name}"] if a.node_count == 1
             else [f"--node-count={a.node_count}", f"--node-prefix={a.name}"])
    argv += ["--spot"] if a.spot else ["--reserved"] if a.reserved else []
    self.gcloud(*argv)
    self.wait_ready()

  def wait_ready(self) -> None:
    """Poll until the queued resource is ACTIVE (queued resources can wait for capacity)."""
    waited = 0.0
    while (state := self.state()) != READY:
      if state in ("FAILED", "SUSPENDED"):
        raise SystemExit(f"launch/tpu.py: {self.qr} is {state}")
      if waited >= self.args.wait_limit:
        raise SystemExit(f"launch/tpu.py: {self.qr} not ACTIVE after {waited:.0f} s ({state})")
      print(f"launch/tpu.py: {self.qr} is {state}; waiting", file=sys.stderr, flush=True)
      time.sleep(self.args.poll)
      waited += self.args.poll

  def ssh_all(self, command: str, check: bool = True) -> int:
    """``command`` on every worker of every node (the nodes run concurrently)."""
    procs = []
    for node in self.nodes():
      argv = ["compute", "tpus", "tpu-vm", "ssh", node, "--worker=all", f"--command={command}"]
      if self.dry:
        self.gcloud(*argv)
        continue
      procs.append(subprocess.Popen(["gcloud", *argv, f"--project={self.args.project}",
                                     f"--zone={self.args.zone}"]))
    codes = [p.wait() for p in procs]
    code = next((c for c in codes if c), 0)
    if check and code:
      raise SystemExit(f"launch/tpu.py: the command failed on a worker (exit {code})")
    return code

  def setup(self) -> None:
    src = self.args.source
    if not src:
      raise SystemExit("launch/tpu.py setup: --source is required (a git URL or a wheel)")
    install = shlex.quote(src)
    if src.endswith(".whl") and not src.startswith(("http", "gs://")):  # a local wheel: copy it
      for node in self.nodes():
        self.gcloud("compute", "tpus", "tpu-vm", "scp", src, f"{node}:", "--worker=all")
      install = shlex.quote(Path(src).name)
    self.ssh_all("python3 -m venv ~/bertjax-venv && . ~/bertjax-venv/bin/activate && "
                 f"pip install -q -U pip && pip install -q {install} 'jax[tpu]' gcsfs")

  def run(self, command: list[str], check: bool = True) -> int:
    if not command:
      raise SystemExit("launch/tpu.py run: give the command after --")
    cmd = shlex.join(command)
    if command[:2] in (["bertjax", "pretrain"], ["bertjax", "finetune"]) and "--distributed" not in command:
      cmd = shlex.join(command[:2] + ["--distributed"] + command[2:])
    return self.ssh_all(f". ~/bertjax-venv/bin/activate && ({cmd}) 2>&1 | tee -a {LOG}; "
                        "exit ${PIPESTATUS[0]}", check=check)

  def babysit(self, command: list[str]) -> int:
    """Run to completion through preemptions: bounded retries, exponential backoff."""
    a = self.args
    if not a.source or not a.accelerator:
      raise SystemExit("launch/tpu.py babysit: --accelerator and --source are required (a "
                       "re-created slice is created and set up again)")
    for attempt in range(a.retries + 1):
      state = self.state()
      if state != READY:
        if state != "NOT_FOUND":
          self.delete()
        self.create()
        self.setup()
      elif attempt == 0:
        self.setup()
      code = self.run(command, check=False)
      if code == 0:
        print(f"launch/tpu.py: done after {attempt + 1} attempt(s)", file=sys.stderr)
        return 0
      state = self.state()
      if state == READY and code == EXIT_PREEMPTED:  # SIGTERM'd and saved, the slice is still
        print("launch/tpu.py: the run saved on SIGTERM and the slice is up; running it again "
              f"({attempt + 1}/{a.retries} retries)", file=sys.stderr, flush=True)
        continue
      if state == READY:  # the slice is fine: the command itself failed; do not loop on it
        raise SystemExit(f"launch/tpu.py: the command failed (exit {code}) on a healthy slice")
      wait = min(a.backoff * 2**attempt, a.max_backoff)
      print(f"launch/tpu.py: slice {state} (preempted or lost); re-creating in {wait:.0f} s "
            f"({attempt + 1}/{a.retries} retries)", file=sys.stderr, flush=True)
      if not self.dry:
        time.sleep(wait)
    raise SystemExit(f"launch/tpu.py: gave up after {a.retries} retries")

  def status(self) -> None:
    print(f"{self.qr}: {self.state()}")

  def logs(self) -> None:
    out = Path(self.args.out)
    out.mkdir(parents=True, exist_ok=True)
    for node in self.nodes():
      for worker in range(self.args.workers):
        self.gcloud("compute", "tpus", "tpu-vm", "scp", f"{node}:{LOG}",
                    str(out / f"{node}-worker-{worker}.log"), f"--worker={worker}", check=False)
    print(f"logs in {out}")

  def delete(self) -> None:
    self.gcloud("compute", "tpus", "queued-resources", "delete", self.qr, "--force", "--quiet")


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
    parser.add_argument("--poll", type=float, help="seconds between state checks", **kw(30.0))
    parser.add_argument("--wait-limit", type=float, help="give up waiting after",
                        **kw(6 * 3600))

  common(p, default=True)
  shared = argparse.ArgumentParser(add_help=False)
  common(shared, default=False)
  sub = p.add_subparsers(dest="cmd", required=True)
  add_parser = sub.add_parser
  sub.add_parser = lambda *a, **k: add_parser(*a, parents=[shared], **k)

  def slice_args(s):
    s.add_argument("--accelerator", help="v5p-64, v5litepod-16, v4-32, v6e-64 ...")
    s.add_argument("--runtime-version", help="default: the generation's TPU VM image")
    kind = s.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="spot capacity (preemptible)")
    kind.add_argument("--reserved", action="store_true", help="a reservation's capacity")

  slice_args(sub.add_parser("create", help="create the slice(s) and wait until ACTIVE"))
  s = sub.add_parser("setup", help="install bertjax on every worker")
  s.add_argument("--source", help="pip source: git+https://... , a wheel path or URL")
  s = sub.add_parser("run", help="run a command on every worker")
  s.add_argument("command", nargs=argparse.REMAINDER)
  s = sub.add_parser("babysit", help="create/setup/run; re-create and resume after preemption")
  slice_args(s)
  s.add_argument("--source", help="pip source for setup")
  s.add_argument("--retries", type=int, default=10)
  s.add_argument("--backoff", type=float, default=60.0, help="first wait, doubled each retry")
  s.add_argument("--max-backoff", type=float, default=1800.0)
  s.add_argument("command", nargs=argparse.REMAINDER)
  sub.add_parser("status", help="the queued resource's state")
  s = sub.add_parser("logs", help="copy every worker's ~/bertjax-run.log here")
  s.add_argument("--out", default="tpu-logs")
  s.add_argument("--workers", type=int, default=1, help="workers per slice (hosts)")
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
  if args.cmd in ("run", "babysit"):
    return getattr(tpu, args.cmd)(command) or 0
  getattr(tpu, args.cmd)()
  return 0


if __name__ == "__main__":
  sys.exit(main())
