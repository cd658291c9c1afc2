"""Nothing lost, nothing silent: a non-finite step never changes the parameters nor reaches a
checkpoint or model folder; an unreadable latest checkpoint falls back to the newest readable
one; one live run per folder (stale locks taken over); a resumed run keeps its config except
for resumable keys, and says so in a history; metrics.jsonl reads as one run after kill -9,
SIGTERM and resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml
from flax import nnx

from bertjax.config import OptimConfig
from bertjax.errors import EXIT_PREEMPTED, NonFiniteError, RunDirError
from bertjax.models import Model
from bertjax.objectives import MlmObjective
from bertjax.train.optim import make_optimizer
from bertjax.train.pretrain import pretrain
from bertjax.train.run_dir import read_status
from bertjax.train.step import init_state, make_train_step
from pretrain_helpers import config, overrides, small_corpus, train_losses
from test_step import batch, tiny

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return small_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", paragraphs=200)


CONSTANT = "optim.schedule=constant"  # the learning rate does not depend on train.steps


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
  """12 steps in one go, checkpoints every 4: the reference losses."""
  run = tmp_path_factory.mktemp("straight") / "run"
  pretrain(config(run, corpus, "train.steps=12", CONSTANT), quiet=True)
  return run


def rows(run: Path, split: str = "train") -> list[dict]:
  """metrics.jsonl rows (a line being written while we read is skipped)."""
  out = []
  for line in (run / "metrics.jsonl").read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if row["split"] == split:
      out.append(row)
  return out


def checkpoint_steps(run: Path) -> list[int]:
  return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def leaves_of_checkpoint(run: Path, step: int) -> list[np.ndarray]:
  with ocp.StandardCheckpointer() as ckpt:
    path = run / "checkpoints" / str(step) / "state"
    meta = ckpt.metadata(path).item_metadata
    return jax.tree.leaves(ckpt.restore(path, jax.tree.map(
        lambda m: np.zeros(m.shape, m.dtype), meta)))


# -- the non-finite guard ------------------------------------------------------------------


@pytest.mark.parametrize("accum", [1, 2])
def test_a_nonfinite_step_leaves_the_state_untouched(accum):
  """On device: a NaN batch changes neither parameters nor optimizer state; good steps around
  it train; more than max_skips in a row halt every later update."""
  cfg = tiny()
  graphdef, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  tx = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0), 10)
  step = jax.jit(make_train_step(graphdef, MlmObjective(), tx, accum, max_skips=1))
  good = batch()
  bad = dict(good, masked_weights=good["masked_weights"].copy())
  bad["masked_weights"][0, 0] = np.nan
  same = lambda a, b: all(np.array_equal(x, y, equal_nan=True)
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  s0 = init_state(graphdef, params, tx, 0)
  s1, m1 = step(s0, good)
  assert not same(s1.params, s0.params)
  s2, m2 = step(s1, bad)
  assert not np.isfinite(float(m2["objective"]))
  assert same(s2.params, s1.params) and same(s2.opt_state, s1.opt_state)
  assert {k: int(v) for k, v in s2.guard.items()} == {"skipped": 1, "in_a_row": 1,
                                                      "last_bad": 2, "halted": 0}
  s3, _ = step(s2, good)  # training goes on after a skipped step
  assert not same(s3.params, s2.params) and int(s3.guard["in_a_row"]) == 0
  s4, _ = step(s3, bad)
  s5, _ = step(s4, bad)  # two in a row > max_skips=1: halted
  assert bool(s5.guard["halted"]) and int(s5.guard["skipped"]) == 3
  s6, _ = step(s5, good)  # a halted run never updates again
  assert same(s6.params, s3.params)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(s6.params))


def test_nan_stop_keeps_the_good_run_as_it_was(corpus, tmp_path):
  """optim.learning_rate=1e6 on a good run: the error names the step; checkpoints and the
  model folder are exactly as the good run left them."""
  run = tmp_path / "run"
  pretrain(config(run, corpus, "train.steps=8", "checkpoint.keep=2"), quiet=True)
  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and
            ("checkpoints" in p.parts or "model" in p.parts)}
  with pytest.raises(NonFiniteError, match=r"step \d+: the loss or the gradients are not finite"):
    pretrain(config(run, corpus, "train.steps=40", "optim.learning_rate=1e6",
                    "optim.warmup_steps=0", "checkpoint.keep=2", "checkpoint.every=1000"),
             quiet=True, allow_config_change=True)
  after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and
           ("checkpoints" in p.parts or "model" in p.parts)}
  assert after == before
  assert checkpoint_steps(run) == [4, 8]
  assert not (run / "run.lock").exists()
  status = read_status(run)
  assert status["state"] == "failed" and status["error"].startswith("NonFiniteError: step ")


def test_nan_skip_stops_after_too_many_in_a_row_and_saves_only_finite_states(corpus, tmp_path):
  run = tmp_path / "run"
  with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
    pretrain(config(run, corpus, "train.steps=60", "optim.learning_rate=1e6",
                    "optim.warmup_steps=0", "checkpoint.every=1", "checkpoint.keep=100",
                    "train.on_nonfinite=skip", "train.max_consecutive_skips=2"), quiet=True)
  assert max(r.get("skipped_steps", 0) for r in rows(run)) >= 1  # it skipped, then went on
  for step in checkpoint_steps(run):
    assert all(np.isfinite(x).all() for x in leaves_of_checkpoint(run, step) if x.dtype.kind == "f")
  assert not (run / "model").exists()


# -- checkpoints, history, lock ------------------------------------------------------------


def test_an_unreadable_latest_checkpoint_falls_back_bit_exactly(corpus, straight, tmp_path):
  run = tmp_path / "run"
  pretrain(config(run, corpus, "train.steps=8", CONSTANT), quiet=True)
  (run / "checkpoints" / "8" / "state" / "_METADATA").write_text("")  # emptied metadata
  with pytest.warns(UserWarning, match="checkpoint step 8 .* is unreadable"):
    resumed = pretrain(config(run, corpus, "train.steps=12", CONSTANT), quiet=True)
  assert resumed["step"] == 12
  assert (run / "unreadable-checkpoints" / "8").is_dir()
  assert [r["step"] for r in rows(run)] == list(range(1, 13))  # one history
  ref, got = train_losses(straight), train_losses(run)
  assert all(got[s] == ref[s] for s in range(5, 13))  # continued from step 4, bit-exactly


def test_no_readable_checkpoint_is_one_error(corpus, tmp_path):
  run = tmp_path / "run"
  pretrain(config(run, corpus, "train.steps=4"), quiet=True)
  (run / "checkpoints" / "4" / "state" / "_METADATA").write_text("")
  with pytest.raises(RunDirError, match="no checkpoint can be restored"):
    pretrain(config(run, corpus, "train.steps=8"), quiet=True)
  assert checkpoint_steps(run) == [4]


def test_resumable_changes_are_recorded_and_others_refused(corpus, tmp_path):
  run = tmp_path / "run"
  pretrain(config(run, corpus, "train.steps=4"), quiet=True)
  pretrain(config(run, corpus, "train.steps=6", "train.log_every=2"), quiet=True)
  history = [json.loads(x) for x in (run / "config-history.jsonl").read_text().splitlines()]
  assert history[-1]["accepted"] == "resumable"
  assert history[-1]["changes"]["train.steps"] == {"old": 4, "new": 6}
  assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6
  saved = (run / "config.yaml").read_text()
  with pytest.raises(RunDirError, match=r"different config \(optim.learning_rate, train.seed\)"):
    pretrain(config(run, corpus, "train.steps=6", "train.log_every=2", "train.seed=3",
                    "optim.learning_rate=0.01"), quiet=True)
  assert (run / "config.yaml").read_text() == saved
  pretrain(config(run, corpus, "train.steps=8", "train.log_every=2",
                  "optim.learning_rate=0.01"), quiet=True, allow_config_change=True)
  history = [json.loads(x) for x in (run / "config-history.jsonl").read_text().splitlines()]
  assert history[-1]["accepted"] == "allowed explicitly"
  assert set(history[-1]["changes"]) == {"optim.learning_rate", "train.steps"}


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(corpus, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  lock = run / "run.lock"
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 0}))
  with pytest.raises(RunDirError, match="is in use by another run"):
    pretrain(config(run, corpus, "train.steps=2"), quiet=True)
  assert sorted(p.name for p in run.iterdir()) == ["run.lock"]
  lock.write_text(json.dumps({"host": "another-host", "pid": 1, "started": 0}))
  with pytest.raises(RunDirError, match="another-host"):
    pretrain(config(run, corpus, "train.steps=2"), quiet=True)
  gone = subprocess.Popen(["true"])
  gone.wait()
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 0}))
  with pytest.warns(UserWarning, match="stale lock"):
    assert pretrain(config(run, corpus, "train.steps=2"), quiet=True)["step"] == 2
  assert not lock.exists()  # released at the end


# -- one history through kill -9 and SIGTERM -----------------------------------------------


def _cli(args: list[str]) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(TESTS.parent), JAX_NUM_CPU_DEVICES="8",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.Popen([sys.executable, "-m", "bertjax.cli", "pretrain", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, ready, seconds=300):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline and proc.poll() is None and not ready():
    time.sleep(0.1)
  assert proc.poll() is None, proc.communicate()[1][-2000:]


def test_metrics_read_as_one_run_after_kill_9_and_resume(corpus, straight, tmp_path):
  run = tmp_path / "run"
  proc = _cli(overrides(run, corpus, "train.steps=100000", "checkpoint.async_save=false",
                        CONSTANT))
  logged = lambda: (run / "metrics.jsonl").exists() and len(rows(run)) >= 6
  _wait_for(proc, lambda: logged() and 4 in checkpoint_steps(run))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(r["step"] for r in rows(run)) >= 6
  assert (run / "run.lock").exists()  # kill -9 leaves it: the next run finds it stale
  with pytest.warns(UserWarning, match="stale lock"):
    pretrain(config(run, corpus, "train.steps=12", CONSTANT), quiet=True)
  assert [r["step"] for r in rows(run)] == list(range(1, 13))
  ref, got = train_losses(straight), train_losses(run)
  assert all(got[s] == ref[s] for s in range(5, 13))


def test_the_step_saved_on_sigterm_has_its_row(corpus, tmp_path):
  run = tmp_path / "run"
  proc = _cli(overrides(run, corpus, "train.steps=100000", "checkpoint.every=100000"))
  _wait_for(proc, lambda: (run / "metrics.jsonl").exists() and len(rows(run)) >= 3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_PREEMPTED, err[-2000:]  # saved, not done: run me again
  result = json.loads(out.strip().splitlines()[-1])
  saved = result["step"]
  assert result["preempted"] and saved >= 3
  assert checkpoint_steps(run) == [saved]
  assert [r["step"] for r in rows(run)] == list(range(1, saved + 1))
  status = read_status(run)
  assert (status["state"], status["step"]) == ("preempted", saved)
  assert {"time", "host", "pid"} <= set(status)
  pretrain(config(run, corpus, f"train.steps={saved + 2}", "checkpoint.every=100000"), quiet=True)
  assert [r["step"] for r in rows(run)] == list(range(1, saved + 3))
  assert (read_status(run)["state"], read_status(run)["step"]) == ("completed", saved + 2)


def test_a_full_disk_stops_before_the_save_and_keeps_the_checkpoints(corpus, tmp_path, capsys,
                                                                      monkeypatch):
  """Free space below the next checkpoint's size: one line naming the folder and the last good
  step, exit 2, nothing half-written, the run folder released; the same command resumes."""
  from bertjax import cli
  from bertjax.train import checkpointer

  run = tmp_path / "run"
  args = ["pretrain", *overrides(run, corpus, "checkpoint.every=2", "checkpoint.keep=10",
                                 "checkpoint.async_save=false")]
  real = checkpointer.free_bytes
  monkeypatch.setattr(checkpointer, "free_bytes",
                      lambda p: real(p) if checkpoint_steps_or_none(run) != [2, 4] else 1000)
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("bertjax pretrain: error: ") and str(run / "checkpoints") in err
  assert "no space left for checkpoint step 6" in err and "step 4, is intact" in err
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
  assert not (run / "run.lock").exists()
  monkeypatch.setattr(checkpointer, "free_bytes", real)
  assert cli.main(args) == 0  # space freed: the same command resumes from step 4
  capsys.readouterr()
  assert [r["step"] for r in rows(run)] == list(range(1, 9))
  assert checkpoint_steps(run) == [2, 4, 6, 8]


def checkpoint_steps_or_none(run: Path):
  return checkpoint_steps(run) if (run / "checkpoints").is_dir() else None
