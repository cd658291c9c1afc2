"""A corpus ready to train on: train and held-out instances and their tokenizer, built from raw
text (tokenized now) or read from a ``prepare-data`` folder (ArrayRecord shards of instances).

Both build instances the same way: per work unit of the input (``sources.plan_units``), a
stream of documents -> batched tokenization -> instances, each with a random shuffle key
(``unit_instances``); the corpus is the instances in key order. ``prepare-data`` writes that
order to its shards, so training from text and from a prepared folder is identical.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from bertjax import storage
from bertjax.config import DataConfig
from bertjax.data import sources
from bertjax.data.instances import (Instance, InstanceStore, Specials, deserialize,
                                    iter_full_sentence_instances, iter_nsp_instances,
                                    iter_packed_instances)
from bertjax.data.tokenizer import Tokenizer

META = "meta.json"  # a prepared folder's index: shards, counts, unigram token, the data config
UNIGRAM = "unigram.npy"  # a prepared folder's training-token counts [vocab]
PLAN = "plan.json"  # in a prepare-data work folder until the preparation is complete

SHIPPED_TOKENIZERS = {  # data.tokenizer names -> folders inside the package
    # vocabularies trained on the shipped corpus (bertjax train-tokenizer), relative to it
    "corpus": "tokenizer",  # WordPiece, 8192, uncased (BERT)
    "corpus-bpe": "tokenizer-bpe",  # byte-level BPE, 8192 (RoBERTa)
    "corpus-spm": "tokenizer-spm",  # SentencePiece unigram, 8000, lowercased (ALBERT)
    # BERT's own 30,522-entry uncased WordPiece vocabulary (Apache-2.0; data/vocab/*/README.md)
    "bert-base-uncased": Path(__file__).resolve().parent / "vocab" / "bert-base-uncased",
}


def load_tokenizer(cfg: DataConfig) -> Tokenizer:
  if not cfg.tokenizer:  # the real-size pod presets: the user brings the vocabulary
    raise sources.DataError("data.tokenizer is not set: point it at a tokenizer folder (tokenizer.json, "
                    "e.g. the family's own from its Hugging Face checkpoint) or train one on "
                    "your corpus: bertjax train-tokenizer FILES --kind bpe --vocab-size N --out DIR")
  if cfg.tokenizer in SHIPPED_TOKENIZERS:
    return Tokenizer.from_dir(sources.CORPUS_DIR / SHIPPED_TOKENIZERS[cfg.tokenizer])
  return Tokenizer.from_dir(cfg.tokenizer)


def tokenize_documents(docs: list[list[str]], tokenizer: Tokenizer):
  """Documents of sentences -> documents of (ids, word_start) arrays, in one batched call."""
  sentences = sources.documents_to_sentences(docs)
  encoded = tokenizer.words_batch([s for doc in sentences for s in doc])
  out, k = [], 0
  for doc in sentences:
    tokenized = []
    for ids, words in encoded[k:k + len(doc)]:
      if ids:
        words = np.array([-1 if w is None else w for w in words])
        starts = np.empty(len(words), bool)
        starts[0] = True
        np.not_equal(words[1:], words[:-1], out=starts[1:])
        tokenized.append((np.array(ids, np.int32), starts))
    k += len(doc)
    if tokenized:
      out.append(tokenized)
  return out


SPLITS = {"train": 0, "eval": 1}  # seeds of the two parts
KEY_BITS = 62  # shuffle keys are uniform in [0, 2**62)
TOKENIZE_CHARS = 1 << 20  # text per batched tokenizer call


def tokenized_stream(blocks: Iterable[list[str]], tokenizer: Tokenizer):
  """Documents of paragraphs -> tokenized documents, tokenizing ~1 MB of text per call."""
  batch, chars = [], 0
  for block in blocks:
    batch.append(block)
    chars += sum(map(len, block))
    if chars >= TOKENIZE_CHARS:
      yield from tokenize_documents(batch, tokenizer)
      batch, chars = [], 0
  if batch:
    yield from tokenize_documents(batch, tokenizer)


def iter_instances(docs, tokenizer: Tokenizer, cfg: DataConfig,
                   rng: np.random.Generator) -> Iterator[Instance]:
  sp = Specials(tokenizer.cls_id, tokenizer.sep_id, tokenizer.roberta_template)
  if cfg.instances in ("nsp", "sop"):
    return iter_nsp_instances(docs, sp, max_seq_length=cfg.max_seq_length,
                              short_seq_prob=cfg.short_seq_prob, rng=rng,
                              sop=cfg.instances == "sop", sop_single_chunk=cfg.sop_single_chunk)
  if cfg.instances in ("full_sentences", "doc_sentences"):
    return iter_full_sentence_instances(docs, sp, max_seq_length=cfg.max_seq_length,
                                        cross_documents=cfg.instances == "full_sentences")
  return iter_packed_instances(docs, sp, max_seq_length=cfg.max_seq_length)


def unit_instances(cfg: DataConfig, tokenizer: Tokenizer, unit: sources.Unit, index: int,
                   split: str) -> Iterator[tuple[int, Instance]]:
  """(shuffle key, instance) for the ``split`` part of the input's unit ``index``, streamed;
  deterministic for (seed, unit)."""
  blocks = sources.heldout_blocks(
      sources.unit_documents(unit, text_field=cfg.text_field, tfds_split=cfg.tfds_split,
                             tfds_data_dir=cfg.tfds_data_dir),
      split, cfg.eval_fraction, cfg.seed, index)
  rng = np.random.default_rng([cfg.seed, SPLITS[split], index])
  key_rng = np.random.default_rng([cfg.seed, 11, SPLITS[split], index])
  keys = iter(())
  for x in iter_instances(tokenized_stream(blocks, tokenizer), tokenizer, cfg, rng):
    key = next(keys, None)
    if key is None:
      keys = iter(key_rng.integers(0, 1 << KEY_BITS, 4096, dtype=np.int64).tolist())
      key = next(keys)
    yield key, x


def too_short(cfg: DataConfig, split: str) -> sources.DataError:
  part = "training" if split == "train" else "held-out"
  return sources.DataError(f"data.source {cfg.source}: the {part} text is too short for one "
                           f"{cfg.instances} instance; add text")


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
  sources.require_source(cfg.source)
  if not sources.is_builtin(cfg.source) and storage.exists(storage.as_path(cfg.source) / PLAN):
    raise sources.DataError(f"data.source {cfg.source}: an unfinished prepare-data folder (its "
                            "preparation did not complete); run the same prepare-data command "
                            "again to finish it")
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
  units = sources.plan_units(cfg.source, tfds_split=cfg.tfds_split,
                             tfds_data_dir=cfg.tfds_data_dir)
  stores = {}
  for split in SPLITS:
    keyed = [kx for u, unit in enumerate(units)
             for kx in unit_instances(cfg, tokenizer, unit, u, split)]
    if not keyed:
      raise too_short(cfg, split)
    keyed.sort(key=lambda kx: kx[0])  # stable: equal keys keep the stream's order
    stores[split] = InstanceStore.from_instances([x for _, x in keyed])
  train = stores["train"]
  return Corpus(train, stores["eval"], tokenizer, token_counts(train, tokenizer.vocab_size))


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
