"""gs:// everywhere, against a real Cloud Storage emulator on 127.0.0.1 (``gcs_emulator.py``):
the storage layer's promises on object storage (whole files, published folders, the run lock),
prepare-data -> pretrain from gs:// ArrayRecord -> stop -> resume (bit-exact with a local run),
SIGTERM in a separate process, and import-hf -> fine-tune -> evaluate / predict -> export-hf ->
embed with gs:// paths only. Each test runs in an empty working folder that must stay empty."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from bertjax import storage
from bertjax.cli import main
from bertjax.errors import EXIT_PREEMPTED, RunDirError
from bertjax.train.pretrain import pretrain
from bertjax.train.run_dir import claim_run_dir, read_status

from gcs_emulator import gcs_emulator
from pretrain_helpers import config, overrides, train_losses

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def bucket():
  with gcs_emulator() as root:
    yield root


@pytest.fixture
def nothing_local(tmp_path, monkeypatch):
  """Run in an empty folder; it must be empty at the end (gs:// paths only)."""
  work = tmp_path / "cwd"
  work.mkdir()
  monkeypatch.chdir(work)
  yield
  assert not list(work.iterdir())


@pytest.fixture(scope="module")
def corpus(books):
  return books


def upload(local: Path, url: str) -> str:
  """A local file or folder copied to object storage (test inputs)."""
  local, dst = Path(local), epath.Path(url)
  files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
  for f in files:
    target = dst if local.is_file() else dst / str(f.relative_to(local))
    target.write_bytes(f.read_bytes())
  return url


def rows(run: str) -> list[dict]:
  text = epath.Path(run, "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def gs_losses(run: str) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in rows(run) if r["split"] == "train"}


def steps_saved(run: str) -> list[int]:
  folder = epath.Path(run, "checkpoints")
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()
                and (p / "commit_success.txt").exists())


# -- the storage layer on object storage --------------------------------------------------


def test_files_folders_and_the_run_lock_on_object_storage(bucket, nothing_local):
  root = storage.as_path(f"{bucket}/layer")
  assert isinstance(root, epath.Path) and str(root) == f"{bucket}/layer"  # not "gs:/..."
  storage.write_text(root / "a.txt", "one")
  storage.append_text(root / "log.jsonl", "1\n")
  storage.append_text(root / "log.jsonl", "2\n")
  assert (root / "a.txt").read_text() == "one" and (root / "log.jsonl").read_text() == "1\n2\n"

  # a folder is published whole: the marker comes last, a failed write leaves nothing
  with storage.publish_dir(root / "model") as d:
    storage.write_text(d / "config.yaml", "x: 1\n")
    assert not storage.is_published(root / "model")
  assert storage.is_published(root / "model")
  with pytest.raises(FileExistsError):
    with storage.publish_dir(root / "model"):
      pass
  with pytest.raises(RuntimeError):
    with storage.publish_dir(root / "half") as d:
      storage.write_text(d / "params", "...")
      raise RuntimeError("the writer died")
  assert not storage.exists(root / "half")
  storage.write_text(root / "orphan" / "config.yaml", "x: 1\n")  # a writer killed mid-way
  with pytest.raises(FileNotFoundError, match="incomplete"):
    storage.check_published(root / "orphan", "model folder")
  storage.move_tree(root / "model", root / "moved")
  assert (root / "moved" / "config.yaml").exists() and not storage.exists(root / "model")

  # the run lock: a live holder on another host refuses, one whose heartbeat stopped is stale
  run = root / "run"
  with claim_run_dir(run, {"a": 1}, resumable=()):
    holder = json.loads((run / "run.lock").read_text())
    assert holder["host"] == socket.gethostname() and "heartbeat" in holder
  assert not (run / "run.lock").exists()  # released
  other = {"host": "preempted-vm", "pid": 1, "started": time.time(), "token": "x"}
  (run / "run.lock").write_text(json.dumps({**other, "heartbeat": time.time()}))
  with pytest.raises(RunDirError, match="in use by another run"):
    with claim_run_dir(run, {"a": 1}, resumable=()):
      pass
  (run / "run.lock").write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))
  with pytest.warns(UserWarning, match="stale lock"):
    with claim_run_dir(run, {"a": 1}, resumable=()):
      pass


# -- pretraining ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(bucket, corpus):
  text = upload(corpus, f"{bucket}/corpus/books.txt")
  out = f"{bucket}/prepared"
  assert main(["prepare-data", f"data.source={text}", "--out", out, "--shards", "2"]) == 0
  return out


def test_prepare_data_on_gcs_resumes_across_hosts_and_is_refused_until_complete(
    bucket, corpus, tmp_path, nothing_local, monkeypatch):
  """Input and output in the bucket: host 0 of 2 is preempted after one unit (the folder is
  refused for training), then both hosts run again and the result is the local path's."""
  from bertjax.config import experiment_config
  from bertjax.data import prepare as prep
  from bertjax.data.corpus import load_corpus
  from bertjax.data.sources import DataError

  text = upload(corpus, f"{bucket}/resume/books.txt")
  cfg = experiment_config(None, [f"data.source={text}"]).data
  unit = 60_000
  local = prep.prepare_data(experiment_config(None, [f"data.source={corpus}"]).data,
                            tmp_path / "local", 2, unit_bytes=unit, log=lambda m: None)
  assert json.loads((local / "meta.json").read_text())["units"] >= 3  # host 0 has two or more
  out = f"{bucket}/resume/prepared"
  real_job, done = prep.unit_job, []

  def preempted_after_one(*job):
    if done:
      raise KeyboardInterrupt
    done.append(real_job(*job))

  monkeypatch.setattr(prep, "unit_job", preempted_after_one)
  with pytest.raises(KeyboardInterrupt):
    prep.prepare_data(cfg, out, 2, unit_bytes=unit, shard=(0, 2), log=lambda m: None)
  assert storage.exists(out) and not storage.is_published(out)
  with pytest.raises(DataError, match="unfinished prepare-data folder"):
    load_corpus(experiment_config(None, [f"data.source={out}"]).data)
  monkeypatch.setattr(prep, "unit_job", real_job)
  hosts = [threading.Thread(target=prep.prepare_data, args=(cfg, out, 2),
                            kwargs=dict(unit_bytes=unit, shard=(i, 2), poll=0.2,
                                        log=lambda m: None)) for i in (1, 0)]
  for h in hosts:
    h.start()
  for h in hosts:
    h.join(timeout=300)
  assert storage.is_published(out)
  names = {p.name for p in epath.Path(out).iterdir()}
  assert "units" not in names and "plan.json" not in names
  for name in ("train-00000-of-00002.array_record", "train-00001-of-00002.array_record",
               "eval-00000-of-00001.array_record", "unigram.npy"):
    assert epath.Path(out, name).read_bytes() == (local / name).read_bytes()


def test_prepare_data_then_pretrain_stop_and_resume_on_gcs(bucket, prepared, straight_run,
                                                           nothing_local):
  assert storage.is_published(prepared)
  assert {"meta.json", "unigram.npy", storage.COMMIT} <= {p.name for p in
                                                         epath.Path(prepared).iterdir()}
  local, _ = straight_run  # reference: the same 8 steps from the local text, in a local folder
  run = f"{bucket}/pretrain"
  event = threading.Event()
  first = pretrain(config(run, prepared), stop_event=event,
                   on_step=lambda s: event.set() if s >= 4 else None, quiet=True)
  assert first["preempted"] and first["step"] == 4 and steps_saved(run) == [4]
  second = pretrain(config(run, prepared), quiet=True)
  assert second["step"] == 8 and steps_saved(run) == [4, 8]
  assert gs_losses(run) == train_losses(local)  # bitwise: gs:// data and run folder change nothing
  assert [r["step"] for r in rows(run) if r["split"] == "train"] == list(range(1, 9))
  assert storage.is_published(f"{run}/model") and not epath.Path(run, "run.lock").exists()
  assert list(epath.Path(run, "events").iterdir())  # TensorBoard events in the bucket
  # the exported model serves from the bucket
  assert main(["fill-mask", f"{run}/model", "the [MASK] of the house"]) == 0
  assert main(["embed", f"{run}/model", "a house", "the town", "--output",
               f"{bucket}/emb.npy"]) == 0
  with epath.Path(bucket, "emb.npy").open("rb") as f:
    assert np.load(f).shape == (2, 32)


def _cli(args: list[str]) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(TESTS.parent), JAX_NUM_CPU_DEVICES="8",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.Popen([sys.executable, "-m", "bertjax.cli", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_to_the_bucket_and_the_run_resumes(bucket, prepared, nothing_local):
  run = f"{bucket}/preempted"
  proc = _cli(["pretrain", *overrides(run, prepared, "train.steps=100000", "checkpoint.every=4",
                                      "checkpoint.async_save=false")])
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None and 4 not in steps_saved(run):
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGTERM)  # a spot VM's preemption notice
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_PREEMPTED, err[-2000:]  # saved, not done
  saved = json.loads(out.strip().splitlines()[-1])["step"]
  assert steps_saved(run)[-1] == saved and not epath.Path(run, "run.lock").exists()
  status = read_status(run)
  assert (status["state"], status["step"]) == ("preempted", saved)
  train_rows = [r["step"] for r in rows(run) if r["split"] == "train"]
  assert train_rows == list(range(1, saved + 1))  # the history reached the bucket at the save
  # the next slice runs on, then dies without a word (kill -9): its lock stays behind, the rows
  # after its last checkpoint never reach the bucket, and the resume picks up from there
  proc = _cli(["pretrain", *overrides(run, prepared, "train.steps=100000", "checkpoint.every=4",
                                      "checkpoint.async_save=false")])
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None and \
      (max(steps_saved(run)) < saved + 4 or len(rows(run)) < saved + 4):
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert read_status(run)["state"] == "running"  # kill -9: nobody wrote the outcome
  last = max(steps_saved(run))
  assert last >= saved + 4 and epath.Path(run, "run.lock").exists()
  with pytest.warns(UserWarning, match="stale lock"):
    result = pretrain(config(run, prepared, f"train.steps={last + 2}", "checkpoint.every=4"),
                      quiet=True)
  assert result["step"] == last + 2
  assert [r["step"] for r in rows(run) if r["split"] == "train"] == list(range(1, last + 3))
  assert (read_status(run)["state"], read_status(run)["step"]) == ("completed", last + 2)


# -- fine-tuning, serving, interop ---------------------------------------------------------


def test_import_finetune_serve_export_embed_with_gcs_paths_only(bucket, tmp_path, nothing_local):
  import torch
  import transformers as T

  from bertjax.data.corpus import SHIPPED_TOKENIZERS
  from bertjax.data.sources import CORPUS_DIR
  from bertjax.tasks.finetune import finetune
  from bertjax.tasks.serve import evaluate_model, predict_model
  from bertjax.config import finetune_config

  from test_finetune import _sentiment, assert_same_task_logits

  # inputs, made locally and uploaded: a transformers checkpoint and the task's files
  vocab = CORPUS_DIR / SHIPPED_TOKENIZERS["corpus"]
  hf_cfg = T.BertConfig(vocab_size=len((vocab / "vocab.txt").read_text().splitlines()),
                        hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
  torch.manual_seed(0)
  T.BertForPreTraining(hf_cfg).save_pretrained(tmp_path / "hf")
  for f in vocab.iterdir():
    (tmp_path / "hf" / f.name).write_bytes(f.read_bytes())
  src = upload(tmp_path / "hf", f"{bucket}/hf-bert")
  train, dev = _sentiment(tmp_path, n_train=96, n_dev=32)
  train, dev = upload(train, f"{bucket}/task/train.jsonl"), upload(dev, f"{bucket}/task/dev.jsonl")

  model = f"{bucket}/models/bert"
  assert main(["import-hf", src, model]) == 0
  assert storage.is_published(model)
  run = f"{bucket}/finetune"
  summary = finetune(finetune_config("rt-polarity", [
      f"init_from={model}", f"run_dir={run}", f"data.train={train}", f"data.validation={dev}",
      f"data.test={dev}", "data.max_seq_length=24", "optim.learning_rate=3e-3",
      "train.batch_size=16", "train.epochs=2", "train.log_every=2"]), quiet=True)
  dev_metrics = summary["seeds"]["0"]["dev"]
  assert storage.is_published(f"{run}/model")
  assert json.loads(epath.Path(run, "summary.json").read_text())["seeds"]["0"]["dev"] == dev_metrics
  assert evaluate_model(run, dev)["accuracy"] == pytest.approx(dev_metrics["accuracy"])
  assert predict_model(run, dev, f"{bucket}/pred.jsonl") == 32
  assert len(epath.Path(bucket, "pred.jsonl").read_text().splitlines()) == 32

  # export -> a transformers folder in the bucket that transformers loads with equal logits
  assert main(["export-hf", run, f"{bucket}/hf-out"]) == 0
  hf = T.AutoModelForSequenceClassification.from_pretrained(
      storage.local_copy(f"{bucket}/hf-out")).eval()
  assert_same_task_logits(run, hf)
  # embed from the imported folder, written to the bucket
  assert main(["embed", model, "a house", "--pooling", "none", "--output",
               f"{bucket}/tokens.npz"]) == 0
  with epath.Path(bucket, "tokens.npz").open("rb") as f:
    assert np.load(f)["embeddings"].shape[0] == 1
