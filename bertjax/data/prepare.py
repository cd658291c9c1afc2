"""``bertjax prepare-data``: tokenize a corpus once into ArrayRecord shards of instances --
streaming, in bounded memory, in parallel over processes and hosts, resumable.

Layout: ``DIR/meta.json``, ``DIR/unigram.npy``, ``DIR/tokenizer/``,
``DIR/{train,eval}-NNNNN-of-NNNNN.array_record``. Training with ``data.source=DIR`` reads
instances by index (grain ArrayRecordDataSource) and masks them on the fly, as the original TPU
setup read TFRecords.

How (the original ran ``create_pretraining_data.py`` once per input shard, by hand):

1. **Instances.** The input is cut into units (``sources.plan_units``: a compressed file, a
   64 MiB byte range of a plain one, 20k TFDS records). Each unit is read as a stream, tokenized
   in batches and turned into instances, each with a random shuffle key
   (``corpus.unit_instances``); instances are written in parts of at most ``PART_BYTES``, each
   sorted by key, with the byte offsets where each output shard's key range starts. A unit is
   done when its marker (``units/uNNNNNN.json``) exists.
2. **Shuffle.** Output shard ``k`` of ``K`` takes the keys in ``[k, k+1) * 2**62 / K`` from
   every part and writes them in key order. Reading the shards in order is reading every
   instance in key order: a global shuffle that does not depend on the number of workers,
   hosts or shards, and is the order the in-memory corpus uses (training from the text and
   from the folder is identical).
3. **Publish.** Unigram counts summed over units, the tokenizer, ``meta.json``; the folder then
   appears whole: locally renamed from the hidden ``.DIR.partial``, on object storage by its
   ``COMMIT`` marker. Training refuses the folder before that.

Memory: one part buffer (``PART_BYTES``), one tokenizer batch and the NSP reservoir per worker in
step 1; one output shard (``SHARD_BYTES`` by default) in step 2 -- not the corpus.

Interrupted, the same command resumes: finished units and shards are kept (the work folder's
``plan.json`` names the inputs, their sizes and the config; a different plan starts over).
``--shard i/N`` runs on N hosts at once into the same folder: host 0 creates (or resumes) the
work folder and the others wait for its ``plan.json``; host i takes the units and shards
``= i (mod N)``, waits for the others between the steps, and host 0 publishes. A host that fails
writes ``hosts/failed-NNNNN.json`` (its error, its time) and the hosts waiting for it stop with
that error; a failure older than a host's own start is an earlier attempt's, which that host's
rerun replaces, so the whole set of hosts can simply be launched again.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bertjax import storage
from bertjax.config import DataConfig, to_dict
from bertjax.data import sources
from bertjax.data.corpus import (KEY_BITS, META, PLAN, SPLITS, UNIGRAM, load_tokenizer,
                                 too_short, unit_instances)
from bertjax.data.instances import serialize

PART_BYTES = 64 << 20  # instances buffered per part before it is sorted and written
SHARD_BYTES = 128 << 20  # target size of an output shard when --shards is not given
_FRAME = struct.Struct("<qI")  # a part's record: shuffle key, length, then the instance bytes


def shard_name(split: str, k: int, num: int) -> str:
  return f"{split}-{k:05d}-of-{num:05d}.array_record"


def shard_bounds(num: int) -> np.ndarray:
  """Output shard k holds the shuffle keys in [bounds[k], bounds[k + 1])."""
  return np.array([(k << KEY_BITS) // num for k in range(num + 1)], np.int64)


def _estimated_bytes(unit: sources.Unit) -> int:
  """Serialized instance bytes a unit will give, roughly (to size the shards)."""
  if unit.kind == "tfds":
    return 3000 * (unit.end - unit.start)
  if unit.end < 0:  # compressed: text is ~4x its .xz / .gz / .zst size
    return 6 * sources._file_size(unit.path)
  return int(1.5 * (unit.end - unit.start))  # ~6 bytes per token of ~4.5 characters


def make_plan(cfg: DataConfig, num_shards: int | None, unit_bytes: int) -> dict:
  units = sources.plan_units(cfg.source, tfds_split=cfg.tfds_split,
                             tfds_data_dir=cfg.tfds_data_dir, unit_bytes=unit_bytes)
  total = sum(_estimated_bytes(u) for u in units)
  train = num_shards or max(1, math.ceil(total / SHARD_BYTES))
  sizes = [sources._file_size(u.path) if u.kind != "tfds" else u.end for u in units]
  plan = {"data": to_dict(cfg), "unit_bytes": unit_bytes, "part_bytes": PART_BYTES,
          "units": [dataclasses.asdict(u) for u in units], "input_sizes": sizes,
          "shards": {"train": train, "eval": max(1, math.ceil(train * cfg.eval_fraction))}}
  return json.loads(json.dumps(plan))  # as it reads back from plan.json


# -- step 1: one unit -> sorted parts --------------------------------------------------------

_TOKENIZERS: dict = {}


def _tokenizer(cfg: DataConfig):
  if cfg.tokenizer not in _TOKENIZERS:
    _TOKENIZERS[cfg.tokenizer] = load_tokenizer(cfg)
  return _TOKENIZERS[cfg.tokenizer]


def _marker(work, u: int):
  return work / "units" / f"u{u:06d}.json"


def unit_job(work: str, cfg: DataConfig, plan: dict, u: int) -> int:
  """Write unit ``u``'s instances as key-sorted parts, then its marker; -> instances."""
  work = storage.as_path(work)
  tokenizer = _tokenizer(cfg)
  unit = sources.Unit(**plan["units"][u])
  summary: dict = {"parts": {}, "count": {}, "tokens": {}}
  unigram = np.zeros(tokenizer.vocab_size, np.int64)
  for split in SPLITS:
    bounds = shard_bounds(plan["shards"][split])
    parts, buf, ids, size = [], [], [], 0

    def flush():
      buf.sort(key=lambda kr: kr[0])
      keys = np.fromiter((k for k, _ in buf), np.int64, len(buf))
      offsets = np.r_[0, np.cumsum([_FRAME.size + len(r) for _, r in buf])]
      name = f"u{u:06d}-{split}-{len(parts):04d}.bin"
      storage.write_bytes(work / "units" / name,
                          b"".join(_FRAME.pack(k, len(r)) + r for k, r in buf))
      parts.append({"name": name, "cut": offsets[np.searchsorted(keys, bounds)].tolist()})
      if split == "train" and ids:
        unigram[:] += np.bincount(np.concatenate(ids), minlength=len(unigram))

    count = tokens = 0
    for key, x in unit_instances(cfg, tokenizer, unit, u, split):
      record = serialize(x)
      buf.append((key, record))
      size += _FRAME.size + len(record)
      ids.append(x.ids[~x.special])
      count += 1
      tokens += len(x.ids)
      if size >= plan["part_bytes"]:
        flush()
        buf, ids, size = [], [], 0
    if buf:
      flush()
    summary["parts"][split], summary["count"][split] = parts, count
    summary["tokens"][split] = tokens
  with io.BytesIO() as f:
    np.save(f, unigram)
    storage.write_bytes(work / "units" / f"u{u:06d}-unigram.npy", f.getvalue())
  storage.write_text(_marker(work, u), json.dumps(summary))  # last: the unit is done
  return summary["count"]["train"]


# -- step 2: one key range of every part -> one output shard ---------------------------------


def shard_job(work: str, name: str, pieces: list[tuple[str, int, int]]) -> int:
  """Gather the byte ranges ``pieces`` (part, start, end), sort by key, write shard ``name``."""
  work = storage.as_path(work)
  records = []
  for part, lo, hi in pieces:
    if hi <= lo:
      continue
    with (work / "units" / part).open("rb") as f:
      f.seek(lo)
      data = f.read(hi - lo)
    o = 0
    while o < len(data):
      key, n = _FRAME.unpack_from(data, o)
      o += _FRAME.size
      records.append((key, data[o:o + n]))
      o += n
  records.sort(key=lambda kr: kr[0])  # stable: ties keep unit order
  write_shard(work / name, (r for _, r in records))
  return len(records)


def write_shard(target, records) -> None:
  """An ArrayRecord file of ``records``, appearing whole (local rename or one upload)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  local = target.with_name(f".{target.name}.partial") if not storage.is_url(target) else None
  with tempfile.TemporaryDirectory() as scratch:
    path = local or Path(scratch) / target.name
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    if local is None:
      storage.copy_file(path, target)
    else:
      os.replace(path, target)


# -- the driver --------------------------------------------------------------------------------


def _worker_init() -> None:
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process


def _run(fn: Callable, jobs: list[tuple], workers: int, what: str, log) -> None:
  if not jobs:
    return
  if workers <= 1 or len(jobs) == 1:
    for i, job in enumerate(jobs, 1):
      fn(*job)
      log(f"{what} {i}/{len(jobs)}")
    return
  import concurrent.futures
  import multiprocessing

  with concurrent.futures.ProcessPoolExecutor(
      min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
      initializer=_worker_init) as pool:
    futures = [pool.submit(fn, *job) for job in jobs]
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      future.result()
      log(f"{what} {i}/{len(jobs)}")


class HostFailed(sources.DataError):
  """Another host of a ``--shard i/N`` preparation failed; this one stops waiting for it."""


def _failed(work, host: int):
  return work / "hosts" / f"failed-{host:05d}.json"


def _check_hosts(work, since: float) -> None:
  """Raise the error of a host that failed after ``since`` (this host's start): an older failure
  belongs to an earlier attempt, and that host's rerun replaces it."""
  for path in sorted((work / "hosts").glob("failed-*.json")):
    try:
      failure = json.loads(path.read_text())
    except (OSError, ValueError):  # removed by its host's rerun meanwhile
      continue
    if failure["time"] >= since:
      raise HostFailed(f"host {failure['host']} failed: {failure['error']}")


def _wait(ready: Callable[[], bool], what: str, poll: float, log,
          work=None, since: float = 0.0) -> None:
  told = False
  while not ready():
    if work is not None:
      _check_hosts(work, since)
    if not told:
      log(f"waiting for the other hosts: {what}")
      told = True
    time.sleep(poll)


def _claim(work, out, plan: dict, primary: bool, poll: float, log) -> None:
  """Create the work folder with ``plan.json``, or resume the one there with the same plan.
  Only host 0 creates (or starts over); the other hosts wait for its ``plan.json``."""
  path = work / PLAN
  same = lambda: storage.exists(path) and json.loads(path.read_text()) == plan
  if same():
    log(f"resuming the preparation in {work}")
    return
  if not primary:
    _wait(same, "host 0 to start the preparation", poll, log)
    return
  if storage.exists(path):
    log(f"{work} holds an unfinished preparation of other inputs or settings; starting over")
    storage.rmtree(work)
  elif storage.is_url(out) and storage.exists(out):
    raise FileExistsError(f"{out} already exists; choose another folder or remove it")
  (work / "units").mkdir(parents=True, exist_ok=True)
  storage.write_text(path, json.dumps(plan, indent=1) + "\n")


def prepare_data(cfg: DataConfig, out_dir: str | Path, num_shards: int | None = None, *,
                 workers: int = 1, shard: tuple[int, int] = (0, 1),
                 unit_bytes: int = sources.UNIT_BYTES, poll: float = 5.0,
                 steps: Callable | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
  """Prepare ``cfg.source`` into ``out_dir`` (see the module docstring); -> the folder.
  ``steps(cfg, plan, work, log) -> statistics``: another engine for steps 1-2 (Apache Beam:
  ``bertjax.data.beam.prepare_data_beam``)."""
  log = log or (lambda msg: print(f"prepare-data: {msg}", file=sys.stderr, flush=True))
  sources.require_source(cfg.source)
  out = storage.absolute(out_dir)
  remote = storage.is_url(out)
  if storage.is_published(out) if remote else out.exists():
    raise FileExistsError(f"{out} already exists; choose another folder or remove it")
  host, hosts = shard
  primary = host == 0
  plan = make_plan(cfg, num_shards, unit_bytes)
  work = out if remote else out.parent / f".{out.name}.partial"
  since = time.time()
  _claim(work, out, plan, primary, poll, log)
  if hosts > 1:
    _failed(work, host).unlink(missing_ok=True)  # this host's earlier failure: this is its rerun
  try:
    if steps is not None:
      finish(cfg, plan, work, steps(cfg, plan, work, log))
      return publish(out, work)
    return _prepare(cfg, plan, out, work, workers, host, hosts, poll, log, since)
  except HostFailed:
    raise
  except Exception as e:
    if hosts == 1:
      if isinstance(e, sources.DataError):  # the input must change, and with it the plan
        storage.rmtree(work)
    else:  # the other hosts stop waiting for this one (the folder stays, to resume)
      error = str(e) if isinstance(e, sources.DataError) else f"{type(e).__name__}: {e}"
      (work / "hosts").mkdir(parents=True, exist_ok=True)
      storage.write_text(_failed(work, host), json.dumps(
          {"host": host, "time": time.time(), "error": error}))
    raise


def _prepare(cfg, plan, out, work, workers, host, hosts, poll, log, since) -> Path:
  num_units = len(plan["units"])
  mine = [u for u in range(host, num_units, hosts)]
  names = {split: [shard_name(split, k, n) for k in range(n)]
           for split, n in plan["shards"].items()}
  all_shards = [n for split in SPLITS for n in names[split]]
  shards_done = lambda: all(storage.exists(work / n) for n in all_shards)
  if not shards_done():
    todo = [u for u in mine if not storage.exists(_marker(work, u))]
    log(f"{num_units} input units, {len(todo)} to read here with {workers} worker(s)")
    _run(unit_job, [(str(work), cfg, plan, u) for u in todo], workers, "units read", log)
    _wait(lambda: all(storage.exists(_marker(work, u)) for u in range(num_units)),
          "reading their units", poll, log, work, since)
    summaries = [json.loads(_marker(work, u).read_text()) for u in range(num_units)]
    jobs = []
    for split in SPLITS:
      for k, name in enumerate(names[split]):
        if (k % hosts == host) and not storage.exists(work / name):
          pieces = [(p["name"], p["cut"][k], p["cut"][k + 1])
                    for s in summaries for p in s["parts"][split]]
          jobs.append((str(work), name, pieces))
    _run(shard_job, jobs, workers, "shards written", log)
  if host != 0:
    return out
  _wait(shards_done, "writing their shards", poll, log, work, since)
  return _publish(cfg, plan, out, work)


def unit_stats(work, plan: dict) -> dict:
  """Instances, tokens and training-token counts summed over the units' markers."""
  summaries = [json.loads(_marker(work, u).read_text()) for u in range(len(plan["units"]))]
  unigram = None
  for u in range(len(plan["units"])):
    with (work / "units" / f"u{u:06d}-unigram.npy").open("rb") as f:
      counts = np.load(f)
    unigram = counts if unigram is None else unigram + counts
  return {"count": {split: sum(s["count"][split] for s in summaries) for split in SPLITS},
          "tokens": {split: sum(s["tokens"][split] for s in summaries) for split in SPLITS},
          "unigram": unigram}


def _publish(cfg: DataConfig, plan: dict, out, work):
  if storage.exists(work / "hosts"):
    storage.rmtree(work / "hosts")  # the earlier failures of hosts that have since rerun
  if storage.exists(work / "units"):
    finish(cfg, plan, work, unit_stats(work, plan))
    storage.rmtree(work / "units")  # the parts: as large as the output
  return publish(out, work)


def finish(cfg: DataConfig, plan: dict, work, stats: dict) -> None:
  """Write what describes the shards (unigram.npy, tokenizer/, meta kept aside as .meta.json
  until ``publish``)."""
  for split in SPLITS:
    if not stats["count"][split]:
      raise too_short(cfg, split)
  with io.BytesIO() as f:
    np.save(f, stats["unigram"])
    storage.write_bytes(work / UNIGRAM, f.getvalue())  # SpanBERT's replacements need it
  _tokenizer(cfg).save(work / "tokenizer")
  meta = {"data": plan["data"], "unigram_token": int(np.argmax(stats["unigram"])),
          **{split: [shard_name(split, k, plan["shards"][split])
                     for k in range(plan["shards"][split])] for split in SPLITS},
          "num_train": stats["count"]["train"], "num_eval": stats["count"]["eval"],
          "train_tokens": stats["tokens"]["train"], "eval_tokens": stats["tokens"]["eval"],
          "units": len(plan["units"]), "unit_bytes": plan["unit_bytes"]}
  storage.write_text(work / f".{META}", json.dumps(meta))


def publish(out, work):
  """meta.json, then the folder appears whole (rename, or the COMMIT marker)."""
  meta = json.loads((work / f".{META}").read_text())
  storage.write_text(work / META, json.dumps(meta, indent=1) + "\n")
  if storage.is_url(out):
    (out / storage.COMMIT).write_text("complete\n")
  else:
    work.rename(out)
  for name in (PLAN, f".{META}"):  # the bookkeeping of the preparation
    (out / name).unlink()
  return out
