"""launch/tpu.py against tests/fake_gcloud.py: a gcloud that follows the queued-resource and node
life cycle (waiting states, lagging reads, SUSPENDING/SUSPENDED, a PREEMPTED node, ssh 255 on a
lost VM, transient API errors) and whose TPU VMs are folders where ssh runs the commands for
real -- the generated setup script (with stand-ins for uv and curl), the detached start, the
polls. The spot-preemption scenario runs real ``bertjax pretrain`` on the fake VMs."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pretrain_helpers import overrides, saved_steps

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_gcloud.py"
TPU = [sys.executable, str(ROOT / "launch" / "tpu.py"), "--project=p", "--zone=us-east5-a",
       "--name=bj", "--poll=0.1"]
WHEEL = "bertjax-0.1.0-py3-none-any.whl"


class Cloud:
  """The fake's folder, its recorded calls, and the launcher run against it."""

  def __init__(self, root: Path, env: dict):
    self.root, self.env = root, env

  def launch(self, *args, scenario="", timeout=300):
    return subprocess.run([*TPU, *args], capture_output=True, text=True, timeout=timeout,
                          env={**self.env, "FAKE_GCLOUD_SCENARIO": scenario})

  def calls(self, tool="gcloud"):
    path = self.root / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r[1:] for r in rows if r[0] == tool]

  def verbs(self):
    """gcloud calls as "queued-resources create", "tpu-vm ssh start", ... (reads left out)."""
    out = []
    for c in self.calls():
      words = [a for a in c if not a.startswith("--")]
      if "describe" in words or words[0] == "storage":
        continue
      command = next((a for a in c if a.startswith("--command=")), "")
      kind = ("start" if "run.sh" in command else "setup" if "uv venv" in command
              else "poll" if "@@bertjax" in command else "")
      out.append(" ".join(words[2:4] + ([kind] if kind else [])))
    return out

  def home(self, node="bj", worker=0) -> Path:
    return self.root / "vm" / node / f"worker-{worker}"


@pytest.fixture
def cloud(tmp_path):
  import portpicker

  bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
  for folder, names in ((bin_dir, ("gcloud", "curl")), (tools, ("uv",))):
    folder.mkdir()
    for name in names:  # on a fresh VM there is no uv: setup fetches it with curl
      shim = folder / name
      shim.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} {name} \"$@\"\n")
      shim.chmod(0o755)
  root = tmp_path / "cloud"
  root.mkdir()
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
         "FAKE_GCLOUD_ROOT": str(root), "FAKE_GCLOUD_TOOLS": str(tools),
         # JAX's TPU-VM cluster detection reads the GCE metadata server; on the fake VMs a
         # one-process SLURM job stands in, so `--distributed` auto-detects as on a slice
         "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "1",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
         "JAX_COORDINATOR_PORT": str(portpicker.pick_unused_port())}
  return Cloud(root, env)


@pytest.fixture
def wheel(tmp_path):
  path = tmp_path / WHEEL
  path.write_bytes(b"PK\x05\x06" + bytes(18))  # an (empty) zip: the fake uv only checks it exists
  return path


def test_dry_run_prints_every_gcloud_command(cloud):
  out = cloud.launch("--dry-run", "--node-count=2", "create", "--accelerator=v5p-64", "--spot")
  assert out.returncode == 0, out.stderr
  line = out.stdout.splitlines()[0]
  assert line.startswith("gcloud compute tpus queued-resources create bj-qr")
  assert "--accelerator-type=v5p-64" in line and "--spot" in line and "--node-count=2" in line
  assert "--runtime-version=v2-alpha-tpuv5" in line and "--project=p" in line
  assert cloud.calls() == []  # nothing ran
  out = cloud.launch("--dry-run", "--node-count=2", "run", "--", "bertjax", "pretrain", "x")
  starts = re.findall(r"^gcloud compute tpus tpu-vm ssh (bj-\d) --worker=all", out.stdout, re.M)
  assert starts == ["bj-0", "bj-1"]  # one per slice, every worker
  assert "bertjax pretrain --distributed x &" in out.stdout  # detached, --distributed added


def test_accelerator_names_and_flags_after_the_subcommand(cloud):
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu.py"), "create",
                        "--accelerator", "v5e-16", "--dry-run", "--project=p", "--zone=z",
                        "--name=bj"], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "--accelerator-type=v5litepod-16" in out.stdout.splitlines()[0]
  assert "--runtime-version=v2-alpha-tpuv5-lite" in out.stdout.splitlines()[0]
  bad = cloud.launch("--dry-run", "create", "--accelerator=v3-8")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().count("\n") == 0 and "--accelerator v3-8" in bad.stderr
  assert cloud.calls() == []


def test_setup_brings_python_the_lock_and_the_source_to_every_worker(cloud, wheel):
  """A fresh VM has no uv: curl's installer brings it; uv makes a Python 3.11 venv, installs
  the lock file's versions, then the wheel copied from here (no dependencies); every worker."""
  assert cloud.launch("create", "--accelerator=v5litepod-16", scenario="workers=2").returncode == 0
  out = cloud.launch("setup", f"--source={wheel}", scenario="workers=2")
  assert out.returncode == 0, out.stderr
  assert out.stdout.count("bertjax 0.1.0 jax") == 2  # the venv imports bertjax on both workers
  assert len(cloud.calls("curl")) == 2
  uv = [c for c in cloud.calls("uv") if c != ["--version"]]
  assert [c[:2] for c in uv] == [["venv", "--allow-existing"], ["pip", "install"],
                                 ["pip", "install"]] * 2
  assert uv[0][2:4] == ["--python", "3.11"]
  lock = cloud.home(worker=1) / "bertjax" / "requirements-tpu.txt"
  assert uv[1][-2:] == ["-r", str(cloud.home() / "bertjax" / "requirements-tpu.txt")]
  assert lock.read_text() == (ROOT / "launch" / "requirements-tpu.txt").read_text()
  assert "--no-deps" in uv[2] and uv[2][-1] == str(cloud.home() / "bertjax" / WHEEL)
  # a gs:// wheel is copied there with gcloud storage cp; an unpinned git URL is refused
  bucket = cloud.root / "gcs" / "b" / "wheels"
  bucket.mkdir(parents=True)
  (bucket / WHEEL).write_bytes(wheel.read_bytes())
  out = cloud.launch("setup", f"--source=gs://b/wheels/{WHEEL}", scenario="workers=2")
  assert out.returncode == 0, out.stderr
  assert [c[:2] for c in cloud.calls() if c[0] == "storage"] == [["storage", "cp"]] * 2
  bad = cloud.launch("setup", "--source=git+https://github.com/o/bertjax.git")
  assert bad.returncode != 0 and "pin a commit" in bad.stderr and "Traceback" not in bad.stderr
  assert cloud.launch("setup", "--source=git+https://github.com/o/bertjax.git@4f2a9c1",
                      scenario="workers=2").returncode == 0


def test_the_lock_pins_every_dependency():
  from packaging.requirements import Requirement

  pins = {}
  for line in (ROOT / "launch" / "requirements-tpu.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, _, version = line.partition("==")
      pins[name.strip().lower().replace("_", "-")] = version.strip()
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  wanted = project["dependencies"] + project["optional-dependencies"]["tpu"]
  for spec in map(Requirement, wanted):
    name = spec.name.lower()
    assert name in pins, f"{name} is not in the lock"
    assert spec.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
  assert {"jaxlib", "libtpu"} <= set(pins)  # the runtime itself, not only its wrapper


def test_spot_preemption_mid_run_resumes_to_completed(cloud, wheel, books, tmp_path):
  """Capacity takes polls to arrive; a maintenance SIGTERM (the slice stays) saves and exits 75:
  the same command runs again on the same slice; then a spot preemption: the run saves, the
  node reads PREEMPTED while the queued resource still reads ACTIVE, then SUSPENDING,
  SUSPENDED -> delete, re-create, setup, run again -> it resumes from the checkpoint and
  completes. Real bertjax on the fake VMs; the run folder stands in for a bucket."""
  run_dir = tmp_path / "run"
  command = ["bertjax", "pretrain", *overrides(run_dir, books, "train.steps=30",
                                               "checkpoint.every=1000")]
  out = cloud.launch("babysit", "--accelerator=v5litepod-8", "--spot", f"--source={wheel}",
                     "--backoff=0", "--", *command,
                     scenario="capacity=3,maintenance=1,preempt=1", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "done after 3 attempt(s)" in out.stderr
  assert "WAITING_FOR_RESOURCES; waiting" in out.stderr
  assert "node bj PREEMPTED" in out.stderr  # read from the node: the queued resource lagged
  assert cloud.verbs().count("queued-resources create") == 2
  assert cloud.verbs().count("queued-resources delete") == 1
  assert cloud.verbs().count("tpu-vm ssh setup") == 2
  assert cloud.verbs().count("tpu-vm ssh start") == 3
  status = json.loads((run_dir / "status.json").read_text())
  assert status["state"] == "completed" and status["step"] == 30
  steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line).get("split") == "train"]
  assert steps == list(range(1, 31))  # one history through two stops and a new slice
  saved = saved_steps(run_dir)
  assert saved[-1] == 30 and 1 <= saved[-2] < 30  # (checkpoint.keep: the newest two)
  log = (cloud.home() / "bertjax" / "logs" / "current.log").read_text()  # the new VM's run
  assert f"pretrain --distributed run_dir={run_dir}" in log and "step 30/30" in log
  assert f"step {saved[-2] + 1}/30" in log and "step 1/30" not in log  # resumed from the save


def test_a_lost_ssh_connection_changes_nothing(cloud, wheel):
  out = cloud.launch("babysit", "--accelerator=v5p-8", f"--source={wheel}", "--backoff=0",
                     "--", "python3", "-c", "import time; time.sleep(3); print('finished')",
                     scenario="ssh-drops=3")
  assert out.returncode == 0, out.stderr
  assert out.stderr.count("runs on detached; retrying") == 3 and "finished" in out.stdout
  assert cloud.verbs().count("tpu-vm ssh start") == 1
  assert cloud.verbs().count("queued-resources create") == 1


def test_a_bad_command_on_a_healthy_slice_is_not_retried(cloud, wheel, tmp_path):
  out = cloud.launch("babysit", "--accelerator=v5p-8", f"--source={wheel}", "--backoff=0",
                     "--", "bertjax", "pretrain", "no-such-preset", f"run_dir={tmp_path / 'r'}")
  assert out.returncode != 0 and "failed on a healthy slice" in out.stderr
  assert "no-such-preset" in out.stdout  # bertjax's own one-line error, followed from worker 0
  assert cloud.verbs().count("tpu-vm ssh start") == 1
  assert cloud.verbs().count("queued-resources create") == 1


def test_transient_api_errors_are_retried_not_read_as_absent(cloud, wheel):
  assert cloud.launch("create", "--accelerator=v5p-8").returncode == 0
  out = cloud.launch("babysit", "--accelerator=v5p-8", f"--source={wheel}", "--", "true",
                     scenario="flaky=3")
  assert out.returncode == 0, out.stderr
  assert out.stderr.count("UNAVAILABLE") == 3 and "retrying" in out.stderr
  assert cloud.verbs().count("queued-resources create") == 1  # never re-created
  assert cloud.verbs().count("queued-resources delete") == 0
  out = cloud.launch("--api-retries=1", "status", scenario="flaky=99")
  assert out.returncode != 0 and "failed 2 times" in out.stderr and "UNAVAILABLE" in out.stderr


def test_babysit_gives_up_after_its_retries(cloud, wheel):
  step = "print('pretrain: step 1/9 loss 1.0', flush=True); import time; time.sleep(60)"
  out = cloud.launch("babysit", "--accelerator=v5p-8", f"--source={wheel}", "--retries=2",
                     "--backoff=0", "--", "python3", "-c", step, scenario="preempt=99")
  assert out.returncode != 0 and "gave up after 2" in out.stderr
  assert cloud.verbs().count("queued-resources create") == 3


def test_run_logs_status_delete_on_every_worker_of_every_node(cloud, wheel, tmp_path):
  multi = ("--node-count=2",)
  scenario = "workers=2"
  assert cloud.launch(*multi, "create", "--accelerator=v5p-16", scenario=scenario).returncode == 0
  assert cloud.launch(*multi, "setup", f"--source={wheel}", scenario=scenario).returncode == 0
  out = cloud.launch(*multi, "run", "--", "sh", "-c", "echo hello from $(pwd); exit 3",
                     scenario=scenario)
  assert out.returncode == 3 and "hello from" in out.stdout  # worker 0's log, its exit code
  out = cloud.launch(*multi, "logs", f"--out={tmp_path / 'logs'}", scenario=scenario)
  assert out.returncode == 0, out.stderr
  logs = sorted(tmp_path.glob("logs/*/*/logs/current.log"))
  assert [p.relative_to(tmp_path / "logs").parts[:2] for p in logs] == [
      ("bj-0", "worker-0"), ("bj-0", "worker-1"), ("bj-1", "worker-0"), ("bj-1", "worker-1")]
  assert all("hello from" in p.read_text() for p in logs)
  assert cloud.launch(*multi, "status").stdout.strip() == "bj-qr: ready (bj-qr ACTIVE)"
  assert cloud.launch(*multi, "delete").returncode == 0
  assert cloud.launch(*multi, "status").stdout.strip() == "bj-qr: deleting (bj-qr DELETING)"
  assert cloud.launch(*multi, "status").stdout.strip() == "bj-qr: absent (bj-qr NOT_FOUND)"
