"""Corpus-scale ``prepare-data``: streamed work units (byte ranges read every document once,
compressed inputs), the global key-order shuffle (independent of workers, hosts, shards and part
size; equal to the in-memory corpus), resumption after an interruption, several hosts at once
into one folder, and bad input leaving nothing behind."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertjax import cli
from bertjax.config import experiment_config
from bertjax.data import prepare as prep
from bertjax.data import sources
from bertjax.data.corpus import ArrayRecordStore, is_prepared, load_corpus
from pretrain_helpers import small_corpus

TESTS = Path(__file__).resolve().parent


def _docs_text(rng: np.random.Generator, n: int) -> str:
  """Documents of 1-80 paragraphs, separated by runs of 1-3 blank lines, some leading ones."""
  words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
  docs = []
  for d in range(n):
    paras = [f"doc {d} para {p} " + " ".join(rng.choice(words, rng.integers(1, 12)))
             for p in range(int(rng.integers(1, 80)))]
    docs.append("\n".join(paras))
  return "\n" + "".join(doc + "\n" * int(rng.integers(2, 5)) for doc in docs)


def test_byte_range_units_read_every_document_once(tmp_path):
  text = tmp_path / "docs.txt"
  text.write_text(_docs_text(np.random.default_rng(0), 60))
  whole = sources.read_documents(str(text))
  assert len(whole) > 60 and max(len(b) for b in whole) == sources.BLOCK  # long docs in blocks
  for unit_bytes in (97, 1000, 4096):
    units = sources.plan_units(str(text), unit_bytes=unit_bytes)
    assert len(units) == -(-text.stat().st_size // unit_bytes)
    assert [b for u in units for b in sources.unit_documents(u)] == whole
  records = tmp_path / "docs.jsonl"
  records.write_text("".join(json.dumps({"text": "\n".join(b), "id": i}) + "\n"
                             for i, b in enumerate(whole)))
  units = sources.plan_units(str(records), unit_bytes=333)
  assert len(units) > 10
  assert [b for u in units for b in sources.unit_documents(u)] == whole


def test_compressed_inputs_read_like_plain_text(tmp_path):
  import zstandard

  raw = _docs_text(np.random.default_rng(1), 20).encode()
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.txt.gz").write_bytes(gzip.compress(raw))
  (tmp_path / "in" / "b.txt.xz").write_bytes(lzma.compress(raw))
  half = len(raw) // 2  # two frames, as zstd -c a b > c writes them
  (tmp_path / "in" / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(raw[:half])
                                             + zstandard.ZstdCompressor().compress(raw[half:]))
  (tmp_path / "in" / "d.txt").write_bytes(raw)
  (tmp_path / "in" / "notes.md").write_text("not an input")
  units = sources.plan_units(str(tmp_path / "in"), unit_bytes=500)
  assert [Path(u.path).name for u in units[:3]] == ["a.txt.gz", "b.txt.xz", "c.txt.zst"]
  assert all(u.end == -1 for u in units[:3]) and len(units) > 4  # plain text: byte ranges
  per_file = {}
  for u in units:
    per_file.setdefault(Path(u.path).name, []).extend(sources.unit_documents(u))
  assert len(per_file) == 4 and all(d == per_file["d.txt"] for d in per_file.values())
  zst = zstandard.ZstdCompressor().compress(raw)
  for name, data in (("e.txt.zst", zst[:-40] + b"junk"), ("e.txt.zst", zst[:-10]),
                     ("e.txt.gz", gzip.compress(raw)[:-30]), ("e.txt.xz", b"not xz")):
    bad = tmp_path / "bad" / name
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(data)
    with pytest.raises(sources.DataError, match=f"{name}: not a readable"):
      sources.read_documents(str(bad))
    bad.unlink()


def _records(folder: Path, split: str) -> list[bytes]:
  """Every record of a split ("train", "eval") or of one shard (its file name), in order."""
  meta = json.loads((folder / "meta.json").read_text())
  store = ArrayRecordStore([folder / n for n in meta.get(split, [split])])
  return [store.source[i] for i in range(len(store))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return small_corpus(tmp_path_factory.mktemp("prep") / "corpus.txt", paragraphs=300)


def _cfg(corpus, *extra):
  return experiment_config(None, [f"data.source={corpus}", *extra]).data


def test_shards_are_a_global_shuffle_equal_to_the_in_memory_corpus(corpus, tmp_path,
                                                                   monkeypatch):
  from bertjax.data.instances import serialize

  cfg = _cfg(corpus)
  unit = 40_000  # several units of the one file
  monkeypatch.setattr(sources, "UNIT_BYTES", unit)
  a = prep.prepare_data(cfg, tmp_path / "a", 1, unit_bytes=unit, log=lambda m: None)
  monkeypatch.setattr(prep, "PART_BYTES", 20_000)  # many parts per unit
  b = prep.prepare_data(cfg, tmp_path / "b", 3, workers=2, unit_bytes=unit, log=lambda m: None)
  meta = json.loads((b / "meta.json").read_text())
  assert meta["units"] == -(-corpus.stat().st_size // unit) > 3 and len(meta["train"]) == 3
  assert not list(tmp_path.glob(".*.partial")) and not (b / "units").exists()
  for split in ("train", "eval"):
    assert _records(a, split) == _records(b, split)  # workers, shards, parts: same order
  # the in-memory corpus (training from text) holds the same instances in the same order
  memory = load_corpus(cfg)
  assert [serialize(memory.train[i]) for i in range(len(memory.train))] == _records(a, "train")
  assert [serialize(memory.eval[i]) for i in range(len(memory.eval))] == _records(a, "eval")
  assert meta["num_train"] == len(memory.train) and meta["num_eval"] == len(memory.eval)
  assert meta["train_tokens"] == memory.train.num_tokens
  assert np.array_equal(np.load(b / "unigram.npy"), memory.unigram)
  # a global shuffle: the shard order is uncorrelated with the order of the text
  from bertjax.data.corpus import load_tokenizer, unit_instances

  units = sources.plan_units(cfg.source, unit_bytes=unit)
  text_order = [serialize(x) for u, unit_ in enumerate(units)
                for _, x in unit_instances(cfg, load_tokenizer(cfg), unit_, u, "train")]
  stream = {r: i for i, r in enumerate(text_order)}
  where = np.array([stream[r] for r in _records(b, "train")])
  assert len(where) == len(stream) == len(set(where))
  assert abs(np.corrcoef(np.arange(len(where)), where)[0, 1]) < 0.1
  labels = np.array([memory.train[i].label for i in range(len(memory.train))])
  assert abs(labels.mean() - 0.5) < 0.05  # NSP balance kept with the reservoir


def test_interrupted_preparation_resumes_and_is_never_taken_for_data(corpus, tmp_path,
                                                                     monkeypatch):
  cfg = _cfg(corpus)
  unit = 40_000
  reference = prep.prepare_data(cfg, tmp_path / "ref", 2, unit_bytes=unit, log=lambda m: None)
  real_job, done = prep.unit_job, []

  def dies_on_the_third(work, cfg, plan, u):
    if len(done) == 2:
      raise KeyboardInterrupt  # the VM is preempted
    done.append(u)
    return real_job(work, cfg, plan, u)

  monkeypatch.setattr(prep, "unit_job", dies_on_the_third)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    prep.prepare_data(cfg, out, 2, unit_bytes=unit, log=lambda m: None)
  partial = tmp_path / ".out.partial"
  assert not out.exists() and not is_prepared(out) and (partial / "plan.json").exists()
  assert len(list((partial / "units").glob("u*.json"))) == 2
  monkeypatch.setattr(prep, "unit_job", real_job)
  logs = []
  prep.prepare_data(cfg, out, 2, unit_bytes=unit, log=logs.append)
  total = json.loads((out / "meta.json").read_text())["units"]
  assert "resuming" in logs[0] and f"{total - 2} to read here" in logs[1]
  assert not partial.exists() and not (out / "plan.json").exists()
  for split in ("train", "eval"):
    assert _records(out, split) == _records(reference, split)
  # a different plan (another seed) in the work folder starts over
  (tmp_path / ".again.partial").mkdir()
  (tmp_path / ".again.partial" / "plan.json").write_text(json.dumps({"other": 1}))
  logs.clear()
  prep.prepare_data(_cfg(corpus, "data.seed=7"), tmp_path / "again", 2, unit_bytes=unit,
                    log=logs.append)
  assert "starting over" in logs[0] and is_prepared(tmp_path / "again")


def test_hosts_prepare_one_folder_together(corpus, tmp_path):
  """Two processes with --shard 0/2 and 1/2 at once: the same folder as one process."""
  args = ["prepare-data", f"data.source={corpus}", "--shards", "3", "--unit-mb", "1",
          "--poll-seconds", "0.2"]
  assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
  env = dict(os.environ, PYTHONPATH=str(TESTS.parent), JAX_PLATFORMS="cpu")
  hosts = [subprocess.Popen([sys.executable, "-m", "bertjax.cli", *args, "--out",
                             str(tmp_path / "two"), "--shard", f"{i}/2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in (1, 0)]
  outputs = [h.communicate(timeout=300) for h in hosts]
  assert [h.returncode for h in hosts] == [0, 0], outputs
  assert "units read 1/1" in outputs[0][1]  # host 1 read its own share
  for split in ("train", "eval"):
    assert _records(tmp_path / "one", split) == _records(tmp_path / "two", split)


def test_beam_pipeline_writes_the_same_shards(corpus, tmp_path):
  """The Apache Beam pipeline (DirectRunner, two worker processes) gives the local path's
  folder: the same records in every shard, the same statistics."""
  from bertjax.data.beam import prepare_data_beam

  cfg = _cfg(corpus)
  unit = 40_000
  local = prep.prepare_data(cfg, tmp_path / "local", 3, unit_bytes=unit, log=lambda m: None)
  logs = []
  beam = prepare_data_beam(cfg, tmp_path / "beam", 3, unit_bytes=unit, log=logs.append,
                           options="--direct_num_workers=2 --direct_running_mode=multi_processing")
  assert "Beam pipeline over" in logs[0] and not (tmp_path / ".beam.partial").exists()
  meta = json.loads((local / "meta.json").read_text())
  assert json.loads((beam / "meta.json").read_text()) == meta and meta["units"] > 3
  for name in (*meta["train"], *meta["eval"]):
    assert _records(local, name) == _records(beam, name)
  assert np.array_equal(np.load(local / "unigram.npy"), np.load(beam / "unigram.npy"))


def test_bad_text_mid_corpus_leaves_nothing(tmp_path, capsys):
  folder = tmp_path / "text"
  folder.mkdir()
  (folder / "a.txt").write_text(_docs_text(np.random.default_rng(2), 10))
  (folder / "b.txt").write_bytes(b"fine line\n\nstill fine\n\xff\xfe broken\n")
  assert cli.main(["prepare-data", f"data.source={folder}", "--out",
                   str(tmp_path / "prep")]) == 2
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if not line.startswith("prepare-data: ")]
  assert len(errors) == 1 and "b.txt:4: not UTF-8" in errors[0]  # one line, no traceback
  assert not (tmp_path / "prep").exists() and not (tmp_path / ".prep.partial").exists()


def test_a_failing_host_stops_the_others_and_all_rerun(corpus, tmp_path, monkeypatch):
  """--shard hosts (threads here): one fails -> the others stop with its error instead of
  waiting forever; then every host reruns (the failure is stale) -> the one-host folder."""
  import threading

  cfg = _cfg(corpus)
  unit = 40_000
  reference = prep.prepare_data(cfg, tmp_path / "one", 2, unit_bytes=unit, log=lambda m: None)
  real_job, flaky = prep.unit_job, [True]

  def fails_once_on_unit_1(work, cfg, plan, u):
    if u == 1 and flaky and flaky.pop():
      raise OSError("connection reset")
    return real_job(work, cfg, plan, u)

  monkeypatch.setattr(prep, "unit_job", fails_once_on_unit_1)

  def run_hosts():
    errors = {}

    def host(i):
      try:
        prep.prepare_data(cfg, tmp_path / "two", 2, unit_bytes=unit, shard=(i, 2), poll=0.05,
                          log=lambda m: None)
      except Exception as e:  # noqa: BLE001 - what each host raised is the result
        errors[i] = e

    threads = [threading.Thread(target=host, args=(i,)) for i in (1, 0)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a host is still waiting"
    return errors

  errors = run_hosts()
  assert isinstance(errors[1], OSError)  # host 1 read unit 1
  assert isinstance(errors[0], prep.HostFailed)
  assert str(errors[0]) == "host 1 failed: OSError: connection reset"
  assert not is_prepared(tmp_path / "two")
  assert run_hosts() == {}  # host 1's failure is older than this attempt: nobody stops on it
  assert not (tmp_path / "two" / "hosts").exists()
  for split in ("train", "eval"):
    assert _records(reference, split) == _records(tmp_path / "two", split)
