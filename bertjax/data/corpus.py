"""A corpus ready to train on: train and held-out instances and their tokenizer, built from raw
text (tokenized now) or read from a ``prepare-data`` folder (ArrayRecord shards of instances).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from bertjax import storage
from bertjax.config import DataConfig
from bertjax.data import sources
from bertjax.data.instances import (InstanceStore, Specials, deserialize, full_sentence_instances,
                                    nsp_instances, packed_instances)
from bertjax.data.tokenizer import Tokenizer

META = "meta.json"  # a prepared folder's index: shards, counts, unigram token, the data config
UNIGRAM = "unigram.npy"  # a prepared folder's training-token counts [vocab]

SHIPPED_TOKENIZERS = {  # vocabularies trained on the shipped corpus (bertjax train-tokenizer)
    "corpus": "tokenizer",  # WordPiece, 8192, uncased (BERT)
    "corpus-bpe": "tokenizer-bpe",  # byte-level BPE, 8192 (RoBERTa)
    "corpus-spm": "tokenizer-spm",  # SentencePiece unigram, 8000, lowercased (ALBERT)
}


def load_tokenizer(cfg: DataConfig) -> Tokenizer:
  if cfg.tokenizer in SHIPPED_TOKENIZERS:
    return Tokenizer.from_dir(sources.CORPUS_DIR / SHIPPED_TOKENIZERS[cfg.tokenizer])
  return Tokenizer.from_dir(cfg.tokenizer)


def tokenize_documents(docs: list[list[str]], tokenizer: Tokenizer):
  """Documents of sentences -> documents of (ids, word_start) arrays, in one batched call."""
  sentences = sources.documents_to_sentences(docs)
  flat = [s for doc in sentences for s in doc]
  encoded = tokenizer.tokenize_batch(flat)
  out, k = [], 0
  for doc in sentences:
    tokenized = []
    for _ in doc:
      ids, _, words = encoded[k]
      k += 1
      if ids:
        words = np.asarray([-1 if w is None else w for w in words])
        starts = np.r_[True, words[1:] != words[:-1]]
        tokenized.append((np.asarray(ids, np.int32), starts))
    if tokenized:
      out.append(tokenized)
  return out


def build_instances(docs, tokenizer: Tokenizer, cfg: DataConfig, seed: int,
                    part: str = "training") -> InstanceStore:
  sp = Specials(tokenizer.cls_id, tokenizer.sep_id, tokenizer.roberta_template)
  rng = np.random.default_rng([cfg.seed, seed])
  if cfg.instances in ("nsp", "sop"):
    instances = nsp_instances(docs, sp, max_seq_length=cfg.max_seq_length,
                              short_seq_prob=cfg.short_seq_prob, rng=rng,
                              sop=cfg.instances == "sop", sop_single_chunk=cfg.sop_single_chunk)
  elif cfg.instances in ("full_sentences", "doc_sentences"):
    instances = full_sentence_instances(docs, sp, max_seq_length=cfg.max_seq_length,
                                        cross_documents=cfg.instances == "full_sentences")
  else:
    instances = packed_instances(docs, sp, max_seq_length=cfg.max_seq_length)
  if not instances:
    raise sources.DataError(f"data.source {cfg.source}: the {part} text is too short for one "
                            f"{cfg.instances} instance; add text")
  return InstanceStore.from_instances(instances)


@dataclasses.dataclass
class Corpus:
  """Train and held-out instances plus what masking needs to know."""

  train: InstanceStore
  eval: InstanceStore
  tokenizer: Tokenizer
  unigram: np.ndarray  # [vocab] counts of the non-template training tokens

  @property
  def unigram_token(self) -> int:
    """The most frequent training token (the unigram baseline's prediction)."""
    return int(np.argmax(self.unigram))


def token_counts(store: InstanceStore, vocab_size: int) -> np.ndarray:
  return np.bincount(store.ids[~store.special], minlength=vocab_size).astype(np.int64)


def load_corpus(cfg: DataConfig) -> Corpus:
  """Instances from raw text (tokenized now) or from a ``prepare-data`` ArrayRecord folder."""
  if is_prepared(cfg.source):
    root = storage.as_path(cfg.source)
    storage.check_published(root, "prepared data folder")
    meta = read_meta(root)
    if not (root / UNIGRAM).exists():
      raise sources.DataError(f"data.source {root} has no {UNIGRAM} (prepared by an older "
                              "bertjax); run bertjax prepare-data again")
    with (root / UNIGRAM).open("rb") as f:
      unigram = np.load(f)
    return Corpus(ArrayRecordStore([root / n for n in meta["train"]]),
                  ArrayRecordStore([root / n for n in meta["eval"]]),
                  Tokenizer.from_dir(root / "tokenizer"), unigram)
  tokenizer = load_tokenizer(cfg)
  docs = sources.read_documents(cfg.source, text_field=cfg.text_field,
                                tfds_split=cfg.tfds_split, tfds_data_dir=cfg.tfds_data_dir)
  if not docs:
    raise sources.DataError(f"data.source {cfg.source}: no text found")
  train_docs, eval_docs = sources.split_heldout(docs, cfg.eval_fraction, cfg.seed)
  if not train_docs:
    raise sources.DataError(f"data.source {cfg.source}: all of its text went to the held-out "
                            f"split (data.eval_fraction={cfg.eval_fraction}); add text")
  train = build_instances(tokenize_documents(train_docs, tokenizer), tokenizer, cfg, seed=0)
  heldout = build_instances(tokenize_documents(eval_docs, tokenizer), tokenizer, cfg, seed=1,
                            part="held-out")
  return Corpus(train, heldout, tokenizer, token_counts(train, tokenizer.vocab_size))


class ArrayRecordStore:
  """Random access to serialized instances in ArrayRecord shards."""

  def __init__(self, paths: list[Path]):
    import grain

    self.paths = [str(p) for p in paths]
    self.source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    return deserialize(self.source[int(i)])

  def __getstate__(self):
    return {"paths": self.paths}

  def __setstate__(self, state):
    self.__init__(state["paths"])


def is_prepared(path: str | Path) -> bool:
  return (storage.as_path(path) / META).exists()


def read_meta(path: str | Path) -> dict:
  return json.loads((storage.as_path(path) / META).read_text())
