"""``prepare-data`` as an Apache Beam pipeline (``pip install 'bertjax[beam]'``), for corpora
that outgrow one machine: ``bertjax prepare-data PRESET data.source=gs://... --out gs://...
--beam "--runner=DataflowRunner ..."`` (or Flink, Spark; DirectRunner by default).

The same two steps as the local path (``bertjax.data.prepare``), as Beam transforms:

  units --Reshuffle--> ParDo(read, tokenize, build instances, key)   -> ((split, shard), record)
        --GroupByKey--> one output shard per key range, sorted by key -> ArrayRecord
  per-unit statistics --CombineGlobally(sum)--> instances, tokens, unigram counts

Every instance carries the key the local path gives it (``corpus.unit_instances``: seeded by
(seed, unit)) and goes to the shard whose key range holds it, so the shards are identical to the
local path's, record for record, whatever the runner, its parallelism or its retries. The
launcher then writes unigram.npy, the tokenizer and meta.json and publishes the folder.
"""

from __future__ import annotations

import bisect
import functools
import json
import shlex
from pathlib import Path

import numpy as np

from bertjax import storage
from bertjax.config import DataConfig
from bertjax.data import sources
from bertjax.data.corpus import SPLITS, unit_instances
from bertjax.data.instances import serialize
from bertjax.data.prepare import _tokenizer, prepare_data, shard_bounds, shard_name, write_shard


def prepare_data_beam(cfg: DataConfig, out_dir: str | Path, num_shards: int | None = None, *,
                      options: list[str] | str = "", **kw) -> Path:
  """``prepare_data`` with steps 1-2 run by Apache Beam (``options``: pipeline options)."""
  return prepare_data(cfg, out_dir, num_shards,
                      steps=functools.partial(run_pipeline, options=options), **kw)


def _unit_records(u: int, cfg: DataConfig, plan: dict):
  """((split, shard), (key, unit, index, record)) per instance of unit ``u``, then the unit's
  statistics on the ``stats`` output."""
  import apache_beam as beam

  tokenizer = _tokenizer(cfg)
  unit = sources.Unit(**plan["units"][u])
  stats = {"count": {}, "tokens": {}}
  unigram = np.zeros(tokenizer.vocab_size, np.int64)
  for split in SPLITS:
    bounds = shard_bounds(plan["shards"][split]).tolist()
    count = tokens = 0
    ids = []
    for i, (key, x) in enumerate(unit_instances(cfg, tokenizer, unit, u, split)):
      yield (split, bisect.bisect_right(bounds, key) - 1), (key, u, i, serialize(x))
      count += 1
      tokens += len(x.ids)
      if split == "train":
        ids.append(x.ids[~x.special])
        if len(ids) >= 4096:
          unigram += np.bincount(np.concatenate(ids), minlength=len(unigram))
          ids = []
    if ids:
      unigram += np.bincount(np.concatenate(ids), minlength=len(unigram))
    stats["count"][split], stats["tokens"][split] = count, tokens
  stats["unigram"] = unigram
  yield beam.pvalue.TaggedOutput("stats", stats)


def _write(group, work: str, plan: dict) -> str:
  (split, k), records = group
  name = shard_name(split, k, plan["shards"][split])
  ordered = sorted(records, key=lambda r: r[:3])  # key; ties in the local path's order
  write_shard(storage.as_path(work) / name, (r[3] for r in ordered))
  return name


def _sum(stats: list[dict]) -> dict:
  stats = list(stats)
  if not stats:
    return {}
  out = {"count": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS},
         "unigram": sum(x["unigram"] for x in stats)}
  for x in stats:
    for field in ("count", "tokens"):
      for split in SPLITS:
        out[field][split] += x[field][split]
  return out


def _save_stats(stats: dict, work: str) -> None:
  work = storage.as_path(work)
  storage.write_text(work / "beam-stats.json", json.dumps(
      {"count": stats["count"], "tokens": stats["tokens"],
       "unigram": stats["unigram"].tolist()}))


def run_pipeline(cfg: DataConfig, plan: dict, work, log, *, options: list[str] | str) -> dict:
  """Run steps 1-2 with Beam into ``work``; -> the summed statistics."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError:
    raise sources.DataError("--beam needs Apache Beam: pip install 'bertjax[beam]'") from None
  if isinstance(options, str):
    options = shlex.split(options)
  runner = " ".join(options) or "DirectRunner"
  log(f"Beam pipeline over {len(plan['units'])} input units ({runner})")
  with beam.Pipeline(options=PipelineOptions(options)) as p:
    out = (p | "units" >> beam.Create(list(range(len(plan["units"]))))
           | "spread" >> beam.Reshuffle()
           | "instances" >> beam.FlatMap(_unit_records, cfg, plan).with_outputs(
               "stats", main="records"))
    (out.records | "by shard" >> beam.GroupByKey()
     | "write shards" >> beam.Map(_write, str(work), plan))
    (out.stats | "sum" >> beam.CombineGlobally(_sum).without_defaults()
     | "save stats" >> beam.Map(_save_stats, str(work)))
  for split in SPLITS:  # a key range nothing fell into is an empty shard, as locally
    for k in range(plan["shards"][split]):
      if not storage.exists(work / shard_name(split, k, plan["shards"][split])):
        write_shard(work / shard_name(split, k, plan["shards"][split]), [])
  path = work / "beam-stats.json"
  if not storage.exists(path):
    raise sources.DataError(f"data.source {cfg.source}: no text found")
  saved = json.loads(path.read_text())
  path.unlink()
  return {"count": saved["count"], "tokens": saved["tokens"],
          "unigram": np.asarray(saved["unigram"], np.int64)}
