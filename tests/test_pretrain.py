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

from pretrain_helpers import config, overrides, train_losses

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
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [4, 8, 10, 12]  # newest 2, plus every 4th kept forever


def test_two_processes_equal_one_process(corpus, straight, tmp_path):
  import portpicker

  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=f"{TESTS}:{TESTS.parent}")
  env.pop("XLA_FLAGS", None)
  mp_run = tmp_path / "two"
  # the two processes stand in for two slices: data parallelism across them (DCN), fsdp
  # inside each (mesh_utils.create_hybrid_device_mesh, processes as granules)
  procs = [subprocess.Popen([sys.executable, str(TESTS / "mp_pretrain.py"), str(i), str(port),
                             str(mp_run), str(corpus), "mesh.slices=2", "mesh.fsdp=2"],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one, _ = straight  # the same 8 steps in this single process
  a, b = train_losses(mp_run), train_losses(one)
  assert sorted(a) == sorted(b)
  for s in a:  # another mesh shape sums in another order: f32 rounding, relative 1e-6
    assert abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(b[s])), (s, a[s], b[s])
  # the 2-process checkpoint restores in this single process (8 devices, another mesh)
  resumed = pretrain(config(mp_run, corpus, "train.steps=10", "mesh.fsdp=2"), quiet=True)
  assert resumed["step"] == 10
  assert np.isfinite(train_losses(mp_run)[9])


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
