"""launch/tpu.py against a fake gcloud on PATH that records its calls and simulates a spot
slice being preempted: create -> setup -> run -> preempted -> re-create -> setup -> the same
run again (bertjax resumes from the run folder by itself) -> done."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU = [sys.executable, str(ROOT / "launch" / "tpu.py"), "--project=p", "--zone=us-east5-a",
       "--name=bj", "--poll=0"]
TRAIN = ["bertjax", "pretrain", "bert-large-pretrain", "run_dir=gs://bucket/runs/bl"]


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_gcloud.py'} \"$@\"\n")
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(tmp_path / "calls.jsonl"))
  monkeypatch.setenv("FAKE_GCLOUD_STATE", str(tmp_path / "state.json"))

  def calls():
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

  return calls


def launch(*args, scenario="ok"):
  return subprocess.run([*TPU, *args], capture_output=True, text=True,
                        env={**os.environ, "FAKE_GCLOUD_SCENARIO": scenario})


def verbs(calls):
  out = []
  for c in calls:
    words = [a for a in c if not a.startswith("--")]
    command = next((a for a in c if a.startswith("--command=")), "")
    kind = "run" if "bertjax pretrain" in command else "setup" if "pip install" in command else ""
    out.append(" ".join(words[2:4]) + (f" {kind}" if kind else ""))
  return out


def test_dry_run_prints_every_gcloud_command(gcloud):
  out = launch("--dry-run", "--node-count=2", "create", "--accelerator=v5p-64", "--spot")
  assert out.returncode == 0, out.stderr
  line = out.stdout.splitlines()[0]
  assert line.startswith("gcloud compute tpus queued-resources create bj-qr")
  assert "--accelerator-type=v5p-64" in line and "--spot" in line and "--node-count=2" in line
  assert "--runtime-version=v2-alpha-tpuv5" in line and "--project=p" in line
  assert gcloud() == []  # nothing ran
  out = launch("--dry-run", "--node-count=2", "run", "--", *TRAIN)
  ssh = [l for l in out.stdout.splitlines() if "tpu-vm ssh" in l]
  assert [l.split()[5] for l in ssh] == ["bj-0", "bj-1"]  # one per slice, every worker
  assert all("--worker=all" in l and "pretrain --distributed" in l for l in ssh)


def test_babysit_recreates_a_preempted_slice_and_runs_again(gcloud):
  out = launch("babysit", "--accelerator=v5litepod-16", "--spot", "--source=bertjax.whl",
               "--backoff=0", "--", *TRAIN, scenario="preempt-once")
  assert out.returncode == 0, out.stderr
  steps = [v for v in verbs(gcloud()) if v != "queued-resources describe"]
  assert steps == ["queued-resources create", "tpu-vm scp", "tpu-vm ssh setup", "tpu-vm ssh run",
                   "queued-resources delete", "queued-resources create", "tpu-vm scp",
                   "tpu-vm ssh setup", "tpu-vm ssh run"]
  runs = [c for c in gcloud() if any("bertjax pretrain" in a for a in c)]
  assert runs[0] == runs[1]  # the same command: the run folder resumes from its checkpoint
  assert "preempted or lost" in out.stderr and "done after 2 attempt(s)" in out.stderr


def test_babysit_gives_up_after_its_retries(gcloud):
  out = launch("babysit", "--accelerator=v5p-8", "--source=git+https://example.invalid/bertjax",
               "--retries=2", "--backoff=0", "--", *TRAIN,
               scenario="preempt-always")
  assert out.returncode != 0 and "gave up after 2 retries" in out.stderr
  assert verbs(gcloud()).count("queued-resources create") == 3


def test_a_failing_command_on_a_healthy_slice_is_not_retried(gcloud):
  out = launch("babysit", "--accelerator=v5p-8", "--source=git+https://example.invalid/bertjax",
               "--backoff=0", "--", *TRAIN, scenario="fail")
  assert out.returncode != 0 and "on a healthy slice" in out.stderr
  assert verbs(gcloud()).count("queued-resources create") == 1


def test_status_logs_delete(gcloud, tmp_path):
  assert launch("create", "--accelerator=v5p-8").returncode == 0
  assert launch("status").stdout.strip() == "bj-qr: ACTIVE"
  out = launch("logs", f"--out={tmp_path / 'logs'}", "--workers=2")
  assert out.returncode == 0
  assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["bj-worker-0.log",
                                                                    "bj-worker-1.log"]
  assert launch("delete").returncode == 0
  assert launch("status").stdout.strip() == "bj-qr: NOT_FOUND"


def test_a_run_saved_on_sigterm_runs_again(gcloud):
  """Exit 75 (saved on SIGTERM, not done): on a slice that is still ACTIVE the same command runs
  again there; on a SUSPENDED one the slice is re-created first. Never read as done/failed."""
  out = launch("babysit", "--accelerator=v5p-8", "--source=git+https://example.invalid/bertjax",
               "--backoff=0", "--", *TRAIN, scenario="sigterm-once")
  assert out.returncode == 0, out.stderr
  assert verbs(gcloud()).count("queued-resources create") == 1
  assert verbs(gcloud()).count("tpu-vm ssh run") == 2 and "done after 2 attempt(s)" in out.stderr


def test_a_preemption_notice_recreates_the_slice(gcloud):
  out = launch("babysit", "--accelerator=v5p-8", "--source=git+https://example.invalid/bertjax",
               "--backoff=0", "--", *TRAIN, scenario="notice-once")
  assert out.returncode == 0, out.stderr
  assert verbs(gcloud()).count("queued-resources create") == 2
  assert verbs(gcloud()).count("tpu-vm ssh run") == 2


def test_accelerator_names_and_flags_after_the_subcommand(gcloud):
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu.py"), "create",
                        "--accelerator", "v5e-16", "--dry-run", "--project=p", "--zone=z",
                        "--name=bj"], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "--accelerator-type=v5litepod-16" in out.stdout.splitlines()[0]
  assert "--runtime-version=v2-alpha-tpuv5-lite" in out.stdout.splitlines()[0]
  bad = launch("--dry-run", "create", "--accelerator=v3-8")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().count("\n") == 0 and "--accelerator v3-8" in bad.stderr
  assert gcloud() == []
