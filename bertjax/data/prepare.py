"""``bertjax prepare-data``: tokenize a corpus once into ArrayRecord shards of instances.

Layout: ``DIR/meta.json``, ``DIR/tokenizer/``, ``DIR/{train,eval}-NNNNN-of-NNNNN.array_record``.
Training with ``data.source=DIR`` then reads instances by index (grain ArrayRecordDataSource)
and masks them on the fly, as the original TPU setup read TFRecords.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from bertjax import storage
from bertjax.config import DataConfig, to_dict
from bertjax.data.corpus import META, UNIGRAM, load_corpus
from bertjax.data.instances import InstanceStore, serialize


def write_shards(store: InstanceStore, out: Path, split: str, num_shards: int) -> list[str]:
  from array_record.python.array_record_module import ArrayRecordWriter

  names = []
  bounds = np.linspace(0, len(store), num_shards + 1).astype(int)
  for k in range(num_shards):
    name = f"{split}-{k:05d}-of-{num_shards:05d}.array_record"
    writer = ArrayRecordWriter(str(out / name), "group_size:1")
    for i in range(bounds[k], bounds[k + 1]):
      writer.write(serialize(store[i]))
    writer.close()
    names.append(name)
  return names


def prepare_data(cfg: DataConfig, out_dir: str | Path, num_shards: int = 4) -> Path:
  """Write the folder whole or not at all (``storage.publish_dir``), locally or on object
  storage (shards are written locally first, then uploaded)."""
  out = storage.absolute(out_dir)
  if storage.exists(out):
    raise FileExistsError(f"{out} already exists; choose another folder or remove it")
  corpus = load_corpus(cfg)
  with storage.publish_dir(out) as dst, tempfile.TemporaryDirectory() as scratch:
    local = dst if not storage.is_url(dst) else Path(scratch)
    meta = {"data": to_dict(cfg), "unigram_token": corpus.unigram_token,
            "train": write_shards(corpus.train, local, "train", num_shards),
            "eval": write_shards(corpus.eval, local, "eval", 1),
            "num_train": len(corpus.train), "num_eval": len(corpus.eval),
            "train_tokens": corpus.train.num_tokens}
    np.save(local / UNIGRAM, corpus.unigram)  # SpanBERT's random replacements need the counts
    if local != dst:
      for name in (*meta["train"], *meta["eval"], UNIGRAM):
        storage.copy_file(local / name, dst / name)
    corpus.tokenizer.save(dst / "tokenizer")
    storage.write_text(dst / META, json.dumps(meta, indent=1) + "\n")
  return out
