"""The pretraining engine: bit-exact resume, resume onto another mesh, SIGTERM, atomic
checkpoints, 2 processes == 1 process, and the CLI end to end."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bertjax import cli
from bertjax.train.checkpointer import Checkpointer
from bertjax.train.pretrain import pretrain

from pretrain_helpers import config, overrides, saved_steps, train_losses

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(books):
  return books


@pytest.fixture(scope="module")
def straight(straight_run):
  """8 steps in one go, on the default mesh (8-way data parallel): conftest's session run."""
  return straight_run


def stop_at(step: int):
  event = threading.Event()
  return event, lambda s: event.set() if s >= step else None


def test_resume_is_bit_exact(straight, corpus, tmp_path):
  run, result = straight
  assert result["step"] == 8 and not result["preempted"]
  event, hook = stop_at(4)
  first = pretrain(config(tmp_path, corpus), stop_event=event, on_step=hook, quiet=True)
  assert first["preempted"] and first["step"] == 4
  second = pretrain(config(tmp_path, corpus), quiet=True)
  assert second["step"] == 8
  a, b = train_losses(run), train_losses(tmp_path)
  assert [s for s in (5, 6, 7, 8) if s in b] == [5, 6, 7, 8]
  for s in (1, 2, 3, 5, 6, 7, 8):
    assert a[s] == b[s], (s, a[s], b[s])  # bitwise: same batches, dropout keys, updates
  assert result["eval"] == second["eval"]


def test_resume_onto_another_mesh_shape(straight, corpus, tmp_path):
  run, _ = straight
  event, hook = stop_at(4)
  pretrain(config(tmp_path, corpus), stop_event=event, on_step=hook, quiet=True)
  pretrain(config(tmp_path, corpus, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), quiet=True)
  a, b = train_losses(run), train_losses(tmp_path)
  for s in (5, 6, 7, 8):
    assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])


def test_interrupted_save_never_replaces_the_good_checkpoint(straight, corpus, tmp_path):
  import shutil

  run, _ = straight
  shutil.copytree(run, tmp_path / "run")
  ckpt_dir = tmp_path / "run" / "checkpoints"
  # what a save killed half-way leaves behind: an unfinalized temporary step folder
  (ckpt_dir / "12.orbax-checkpoint-tmp-1700000000").mkdir()
  (ckpt_dir / "12.orbax-checkpoint-tmp-1700000000" / "state").mkdir()
  from bertjax.config import CheckpointConfig

  assert Checkpointer(ckpt_dir, CheckpointConfig()).latest_step() == 8
  result = pretrain(config(tmp_path / "run", corpus, "train.steps=10"), quiet=True)
  assert result["step"] == 10
  losses = train_losses(tmp_path / "run")
  assert 9 in losses and np.isfinite(losses[9])


def test_keep_policies(corpus, tmp_path):
  pretrain(config(tmp_path, corpus, "train.steps=12", "checkpoint.every=2", "checkpoint.keep=2",
                  "checkpoint.keep_every=4"), quiet=True)
  assert saved_steps(tmp_path) == [4, 8, 10, 12]  # newest 2, plus every 4th kept forever


def two_processes(run_dir, corpus, *overrides, **env):
  """Both processes of a 2-process run to their end: [(exit code, result or None, stderr)]."""
  import portpicker

  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=f"{TESTS}:{TESTS.parent}", **env)
  env.pop("XLA_FLAGS", None)
  # the two processes stand in for two slices: data parallelism across them (DCN), fsdp
  # inside each (mesh_utils.create_hybrid_device_mesh, processes as granules)
  procs = [subprocess.Popen([sys.executable, str(TESTS / "mp_pretrain.py"), str(i), str(port),
                             str(run_dir), str(corpus), "mesh.slices=2", "mesh.fsdp=2",
                             *overrides], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  out = []
  for p in procs:
    stdout, err = p.communicate(timeout=300)  # a hang is a failure, not a wait
    results = [line for line in stdout.splitlines() if line.startswith("{")]  # (gloo talks too)
    out.append((p.returncode, json.loads(results[-1]) if results else None, err[-3000:]))
  return out


def test_two_processes_agree_on_a_sigterm_to_one_and_equal_one_process(corpus, straight,
                                                                        tmp_path):
  """Only process 1 gets SIGTERM (after step 2): both save the same step and exit 75; the run
  goes on from there to step 8 and its losses equal the single-process run's."""
  from bertjax.errors import EXIT_PREEMPTED
  from bertjax.train.run_dir import read_status

  mp_run = tmp_path / "two"
  first = two_processes(mp_run, corpus, MP_SIGTERM_AT="2", MP_STEP_SLEEP="0.3")
  assert [code for code, _, _ in first] == [EXIT_PREEMPTED] * 2, first
  stopped = {result["step"] for _, result, _ in first}
  # one step for both: the step in flight when the notice came (2) or a later one -- how soon
  # the notice reaches the service is timing, the agreement is not
  assert len(stopped) == 1 and 2 <= stopped.pop() < 8, first
  saved = first[0][1]["step"]
  assert saved_steps(mp_run) == [saved]
  assert read_status(mp_run)["state"] == "preempted" and read_status(mp_run)["step"] == saved
  second = two_processes(mp_run, corpus)
  assert [(code, result["step"]) for code, result, _ in second] == [(0, 8)] * 2, second
  assert read_status(mp_run)["state"] == "completed"
  one, _ = straight  # the same 8 steps in this single process
  a, b = train_losses(mp_run), train_losses(one)
  assert sorted(a) == sorted(b)
  for s in a:  # another mesh shape sums in another order: f32 rounding, relative 1e-6
    assert abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(b[s])), (s, a[s], b[s])
  # the 2-process checkpoint restores in this single process (8 devices, another mesh)
  resumed = pretrain(config(mp_run, corpus, "train.steps=10", "mesh.fsdp=2"), quiet=True)
  assert resumed["step"] == 10
  assert np.isfinite(train_losses(mp_run)[9])


def test_a_dead_process_ends_the_other_within_the_heartbeat(corpus, tmp_path):
  """Process 1 is killed (a lost VM) after step 2: process 0 does not wait in a collective
  forever -- the coordination service's heartbeat (5 s here) ends it, non-zero, and the run
  folder keeps its last good checkpoint (step 2) for the rerun."""
  (code0, result0, err0), (code1, _, _) = two_processes(
      tmp_path, corpus, "train.steps=40", "checkpoint.every=2", MP_KILL_AT="3",
      MP_STEP_SLEEP="0.3", MP_HEARTBEAT="5")
  assert code1 == -9 and code0 != 0 and result0 is None, err0
  assert "heartbeat" in err0 or "UNAVAILABLE" in err0 or "failed" in err0, err0
  assert saved_steps(tmp_path) in ([], [2])


def test_cli_pretrain_then_fill_mask(corpus, tmp_path, capsys):
  assert cli.main(["pretrain", *overrides(tmp_path, corpus, "train.steps=6",
                                          "train.log_every=2", "train.eval_every=4")]) == 0
  out = capsys.readouterr()
  summary = json.loads(out.out)
  assert summary["steps"] == 6 and 0 <= summary["held_out_mlm_accuracy"] <= 1
  # stderr is not a terminal here: plain, flushed lines a person can follow in a VM's log
  lines = [line for line in out.err.splitlines() if " pretrain: " in line]
  steps = [line for line in lines if " pretrain: step " in line and " loss " in line
           and " eval " not in line]
  assert [line.split(" pretrain: step ")[1].split()[0] for line in steps] == ["1/6", "2/6", "4/6",
                                                                             "6/6"]
  assert all("ETA" in line for line in steps) and "tok/s" in steps[1]
  assert any(": eval " in line and "mlm_accuracy" in line for line in lines)
  assert any("checkpoint saving to" in line for line in lines)
  # one figure of its curves; a folder without metrics is a one-line error
  png = tmp_path / "plots" / "curves.png"
  assert cli.main(["plot", str(tmp_path), "--out", str(png)]) == 0
  capsys.readouterr()
  import matplotlib.image

  assert matplotlib.image.imread(png).shape[:2] == (770, 1210)
  from bertjax.plot import read_metrics

  rows = read_metrics(tmp_path)[tmp_path.name]
  assert {r["split"] for r in rows} == {"train", "eval"}
  assert cli.main(["plot", str(tmp_path / "plots")]) == 2
  assert "no metrics.jsonl" in capsys.readouterr().err
  assert (tmp_path / "config.yaml").exists() and (tmp_path / "events").is_dir()
  assert cli.main(["fill-mask", str(tmp_path), "the [MASK] of the house", "--top-k", "3"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert len(result[0]["predictions"]) == 3


def test_bad_override_does_not_touch_the_run_dir(corpus, tmp_path, capsys):
  assert cli.main(["pretrain", *overrides(tmp_path / "r", corpus), "train.stepz=3"]) == 2
  assert "unknown config key train.stepz; did you mean train.steps?" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()
  pretrain(config(tmp_path / "r", corpus, "train.steps=2"), quiet=True)
  before = (tmp_path / "r" / "config.yaml").read_text()
  assert cli.main(["pretrain", *overrides(tmp_path / "r", corpus, "model.num_layers=3")]) == 2
  assert "different config (model.num_layers)" in capsys.readouterr().err
  assert (tmp_path / "r" / "config.yaml").read_text() == before
  # --allow-config-change: the same change goes through and the history says so
  assert cli.main(["pretrain", "--allow-config-change",
                   *overrides(tmp_path / "r", corpus, "train.steps=3",
                              "optim.learning_rate=0.01")]) == 0
  capsys.readouterr()
  history = [json.loads(x) for x in (tmp_path / "r" / "config-history.jsonl").read_text().splitlines()]
  assert history[-1]["accepted"] == "allowed explicitly"
  assert set(history[-1]["changes"]) == {"optim.learning_rate", "train.steps"}


def test_prepared_array_record_data_trains_identically(corpus, tmp_path, capsys):
  assert cli.main(["prepare-data", f"data.source={corpus}", "--out", str(tmp_path / "prep"),
                   "--shards", "2"]) == 0
  a = pretrain(config(tmp_path / "raw", corpus, "train.steps=3"), quiet=True)
  b = pretrain(config(tmp_path / "arr", corpus, "train.steps=3",
                      f"data.source={tmp_path / 'prep'}"), quiet=True)
  assert train_losses(tmp_path / "raw") == train_losses(tmp_path / "arr")
  assert a["unigram_baseline_accuracy"] == b["unigram_baseline_accuracy"]


def test_gradient_accumulation_through_the_sharded_engine(corpus, tmp_path):
  """train.grad_accum_steps=4 on a data x fsdp mesh trains like the whole batch at once:
  every step's loss and the held-out result agree (dropout off: the microbatches' dropout
  keys differ by design)."""
  common = ("train.steps=3", "mesh.data=4", "mesh.fsdp=2", "model.hidden_dropout=0",
            "model.attention_dropout=0")
  whole = pretrain(config(tmp_path / "one", corpus, *common), quiet=True)
  accum = pretrain(config(tmp_path / "four", corpus, *common, "train.grad_accum_steps=4"),
                   quiet=True)
  a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "four")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  for s in a:
    assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), (s, a[s], b[s])
  assert whole["eval"]["mlm_loss"] == pytest.approx(accum["eval"]["mlm_loss"], rel=1e-5)


def test_worker_processes_feed_the_same_batches(straight, corpus, tmp_path):
  """data.num_workers=2 (grain's multiprocess prefetch): the run is bitwise the straight one."""
  run, _ = straight
  pretrain(config(tmp_path / "w", corpus, "data.num_workers=2"), quiet=True)
  assert train_losses(tmp_path / "w") == train_losses(run)
