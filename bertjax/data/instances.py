"""Pretraining instances from tokenized documents.

* ``nsp``: google-research/bert create_pretraining_data.py -- target length with short_seq_prob,
  segment A = a random prefix of the chunk, B = the true continuation or (50%) a random
  document's text, unused segments put back, longest-first truncation from a random end.
* ``sop``: ALBERT -- B is always the continuation and A/B swap half the time (label 1 =
  swapped); a single-chunk document gets a random-document B (the original) or is dropped.
* ``full_sentences``: RoBERTa FULL-SENTENCES -- contiguous sentences packed to the target
  length across document boundaries, a separator between documents, no NSP.
* ``packed``: whole documents ``[CLS] doc [SEP]`` packed into rows with segment ids, so the
  model attends within each document only (positions restart per document).

Instances live in flat numpy arrays (``InstanceStore``) and serialize to bytes for ArrayRecord.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import struct
from typing import Iterable, Iterator, Sequence

import numpy as np

# A tokenized sentence: (ids int32[n], word_start bool[n]).
Sentence = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class Instance:
  ids: np.ndarray  # int32 [n], template tokens included
  word_start: np.ndarray  # bool [n]: token begins a word (whole-word masking)
  type_ids: np.ndarray  # int8 [n]
  special: np.ndarray  # bool [n]: template tokens, never masked
  segment_ids: np.ndarray | None = None  # int16 [n] for packed rows (documents 1..k)
  label: int = -1  # NSP / SOP label (1 = random next / swapped); -1 = none


@dataclasses.dataclass(frozen=True)
class Specials:
  cls: int
  sep: int
  roberta_template: bool = False  # <s> A </s></s> B </s>


def _concat(sentences: Sequence[Sentence]) -> Sentence:
  if not sentences:
    return np.zeros(0, np.int32), np.zeros(0, bool)
  return (np.concatenate([s[0] for s in sentences]).astype(np.int32),
          np.concatenate([s[1] for s in sentences]).astype(bool))


def _truncate_pair(a: list, b: list, max_tokens: int, rng: np.random.Generator) -> None:
  """BERT's truncate_seq_pair: drop one token at a time from the longer side (b on a tie), from
  its front or back at random. In closed form: the counts each side loses follow from the
  lengths; the front/back split of each side's count is binomial(n, 1/2)."""
  la, lb = len(a[0]), len(b[0])
  excess = la + lb - max_tokens
  if excess <= 0:
    return
  gap = min(excess, abs(la - lb))
  cut_a, cut_b = (gap, 0) if la > lb else (0, gap)
  rest = excess - gap  # then alternately, b first (the lengths are equal)
  cut_a, cut_b = cut_a + rest // 2, cut_b + rest - rest // 2
  for side, cut in ((a, cut_a), (b, cut_b)):
    if cut:
      front = int(rng.binomial(cut, 0.5))
      n = len(side[0])
      side[0], side[1] = side[0][front:n - cut + front], side[1][front:n - cut + front]


def _pair_instance(a: Sentence, b: Sentence, label: int, sp: Specials) -> Instance:
  if sp.roberta_template:
    parts = [[sp.cls], a[0], [sp.sep, sp.sep], b[0], [sp.sep]]
    starts = [[True], a[1], [True, True], b[1], [True]]
    types = np.zeros(sum(len(p) for p in parts), np.int8)
  else:
    parts = [[sp.cls], a[0], [sp.sep], b[0], [sp.sep]]
    starts = [[True], a[1], [True], b[1], [True]]
    types = np.concatenate([np.zeros(len(a[0]) + 2, np.int8), np.ones(len(b[0]) + 1, np.int8)])
  ids = np.concatenate([np.asarray(p, np.int32) for p in parts])
  special = np.zeros(len(ids), bool)
  special[0] = True
  special[1 + len(a[0]):len(ids) - len(b[0]) - 1] = True
  special[-1] = True
  return Instance(ids, np.concatenate([np.asarray(s, bool) for s in starts]), types, special,
                  label=label)


NSP_POOL = 1024  # documents the random next segment is drawn from (a reservoir, see below)


def nsp_instances(docs: Iterable[list[Sentence]], sp: Specials, **kw) -> list[Instance]:
  return list(iter_nsp_instances(docs, sp, **kw))


def iter_nsp_instances(docs: Iterable[list[Sentence]], sp: Specials, *, max_seq_length: int,
                       short_seq_prob: float, rng: np.random.Generator, sop: bool = False,
                       sop_single_chunk: str = "random",
                       pool_size: int = NSP_POOL) -> Iterator[Instance]:
  """NSP / SOP instances from a stream of documents. The original draws the random next
  document from the whole corpus in memory; here it comes from a reservoir of ``pool_size``
  documents of the stream (filled with the first ``pool_size``, then a uniform sample of all
  read so far, Vitter's algorithm R), so memory stays bounded whatever the corpus size. A
  corpus of at most ``pool_size`` documents draws from all of them, as the original does."""
  docs = iter(docs)
  ahead = collections.deque(itertools.islice(docs, pool_size))
  pool = list(ahead)
  seen = len(pool)
  while ahead:
    doc = ahead.popleft()
    new = next(docs, None)
    if new is not None:
      ahead.append(new)
      seen += 1
      j = int(rng.integers(0, seen))
      if j < pool_size:
        pool[j] = new
    yield from _nsp_document(doc, pool, sp, max_seq_length, short_seq_prob, rng, sop,
                             sop_single_chunk)


def _nsp_document(doc, pool, sp, max_seq_length, short_seq_prob, rng, sop, sop_single_chunk):
  num_special = 4 if sp.roberta_template else 3
  max_tokens = max_seq_length - num_special
  target = max_tokens
  if rng.random() < short_seq_prob:
    target = int(rng.integers(2, max_tokens + 1))
  chunk: list[Sentence] = []
  length = 0
  i = 0
  while i < len(doc):
    chunk.append(doc[i])
    length += len(doc[i][0])
    if i == len(doc) - 1 or length >= target:
      if chunk:
        a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
        a = list(_concat(chunk[:a_end]))
        single = len(chunk) == 1
        if single and sop and sop_single_chunk == "drop":
          chunk, length = [], 0
          i += 1
          continue
        if single or (not sop and rng.random() < 0.5):
          label = 1  # random next (NSP), or ALBERT's single-chunk fallback
          target_b = max(1, target - len(a[0]))
          for _ in range(10):
            random_doc = pool[int(rng.integers(0, len(pool)))]
            if random_doc is not doc:
              break
          start = int(rng.integers(0, len(random_doc)))
          picked, picked_len = [], 0
          for j in range(start, len(random_doc)):
            picked.append(random_doc[j])
            picked_len += len(random_doc[j][0])
            if picked_len >= target_b:
              break
          b = list(_concat(picked))
          i -= len(chunk) - a_end  # put the unused segments back
        else:
          label = 0
          b = list(_concat(chunk[a_end:]))
          if sop and rng.random() < 0.5:
            a, b, label = b, a, 1
        _truncate_pair(a, b, max_tokens, rng)
        if len(a[0]) >= 1 and len(b[0]) >= 1:
          yield _pair_instance(tuple(a), tuple(b), label, sp)
      chunk, length = [], 0
    i += 1


def full_sentence_instances(docs: Iterable[list[Sentence]], sp: Specials,
                            **kw) -> list[Instance]:
  return list(iter_full_sentence_instances(docs, sp, **kw))


def iter_full_sentence_instances(docs: Iterable[list[Sentence]], sp: Specials, *,
                                 max_seq_length: int,
                                 cross_documents: bool = True) -> Iterator[Instance]:
  """RoBERTa FULL-SENTENCES: blocks of whole sentences up to the length, crossing documents
  with a separator token; over-long sentences are split. ``cross_documents=False`` is
  DOC-SENTENCES (SpanBERT's ``break_mode=doc``): a block never leaves its document."""
  budget = max_seq_length - 2
  block: list[Sentence] = []
  size = 0

  def emit():
    ids, starts = _concat(block)
    ids = np.concatenate([[sp.cls], ids, [sp.sep]]).astype(np.int32)
    starts = np.concatenate([[True], starts, [True]])
    special = np.zeros(len(ids), bool)
    special[[0, -1]] = True
    special[1:-1] |= ids[1:-1] == sp.sep  # document separators inside the block
    return Instance(ids, starts, np.zeros(len(ids), np.int8), special)

  sep = (np.array([sp.sep], np.int32), np.array([True]))
  for d, doc in enumerate(docs):
    if d and size:
      if size + 1 > budget or not cross_documents:
        yield emit()
        block, size = [], 0
      else:
        block.append(sep)
        size += 1
    for sentence in doc:
      ids, starts = sentence
      while len(ids):
        if size + len(ids) > budget and size:
          yield emit()
          block, size = [], 0
        take = min(len(ids), budget)
        block.append((ids[:take], starts[:take]))
        size += take
        ids, starts = ids[take:], starts[take:]
  if size:
    yield emit()


def packed_instances(docs: Iterable[list[Sentence]], sp: Specials, **kw) -> list[Instance]:
  return list(iter_packed_instances(docs, sp, **kw))


def iter_packed_instances(docs: Iterable[list[Sentence]], sp: Specials, *,
                          max_seq_length: int) -> Iterator[Instance]:
  """Documents as ``[CLS] doc [SEP]`` pieces (long ones split), packed in order into rows; a
  row's segment ids number its documents 1..k."""

  def emit(row):
    ids, starts, special, segs = [], [], [], []
    for k, (p_ids, p_starts) in enumerate(row, 1):
      ids += [[sp.cls], p_ids, [sp.sep]]
      starts += [[True], p_starts, [True]]
      special += [[True], np.zeros(len(p_ids), bool), [True]]
      segs.append(np.full(len(p_ids) + 2, k, np.int16))
    ids = np.concatenate([np.asarray(x, np.int32) for x in ids])
    return Instance(ids, np.concatenate([np.asarray(x, bool) for x in starts]),
                    np.zeros(len(ids), np.int8), np.concatenate(special),
                    segment_ids=np.concatenate(segs))

  row: list[Sentence] = []
  size = 0
  for doc in docs:
    ids, starts = _concat(doc)
    for s in range(0, len(ids), max_seq_length - 2):
      piece = (ids[s:s + max_seq_length - 2], starts[s:s + max_seq_length - 2])
      if size + len(piece[0]) + 2 > max_seq_length and row:
        yield emit(row)
        row, size = [], 0
      row.append(piece)
      size += len(piece[0]) + 2
  if row:
    yield emit(row)


class InstanceStore:
  """Instances in flat arrays with offsets: random access without per-instance objects."""

  def __init__(self, ids, word_start, type_ids, special, segment_ids, labels, offsets):
    self.ids, self.word_start, self.type_ids = ids, word_start, type_ids
    self.special, self.segment_ids, self.labels, self.offsets = special, segment_ids, labels, offsets

  @classmethod
  def from_instances(cls, instances: Sequence[Instance]) -> "InstanceStore":
    if not instances:
      raise ValueError("no instances: the corpus is empty or too short")
    offsets = np.zeros(len(instances) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x.ids) for x in instances])
    packed = instances[0].segment_ids is not None
    return cls(np.concatenate([x.ids for x in instances]).astype(np.int32),
               np.concatenate([x.word_start for x in instances]),
               np.concatenate([x.type_ids for x in instances]).astype(np.int8),
               np.concatenate([x.special for x in instances]),
               np.concatenate([x.segment_ids for x in instances]) if packed else None,
               np.array([x.label for x in instances], np.int32), offsets)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> Instance:
    s, e = self.offsets[i], self.offsets[i + 1]
    return Instance(self.ids[s:e], self.word_start[s:e], self.type_ids[s:e], self.special[s:e],
                    None if self.segment_ids is None else self.segment_ids[s:e],
                    int(self.labels[i]))

  @property
  def num_tokens(self) -> int:
    return int(self.offsets[-1])


_HEADER = struct.Struct("<iib")


def serialize(x: Instance) -> bytes:
  """One ArrayRecord record: header (n, label, packed) + ids, types, flags, segments."""
  n = len(x.ids)
  flags = (x.word_start.astype(np.int8) | (x.special.astype(np.int8) << 1))
  parts = [_HEADER.pack(n, x.label, x.segment_ids is not None), x.ids.astype("<i4").tobytes(),
           x.type_ids.astype(np.int8).tobytes(), flags.astype(np.int8).tobytes()]
  if x.segment_ids is not None:
    parts.append(x.segment_ids.astype("<i2").tobytes())
  return b"".join(parts)


def deserialize(record: bytes) -> Instance:
  n, label, packed = _HEADER.unpack_from(record)
  o = _HEADER.size
  ids = np.frombuffer(record, "<i4", n, o).astype(np.int32)
  o += 4 * n
  types = np.frombuffer(record, np.int8, n, o)
  o += n
  flags = np.frombuffer(record, np.int8, n, o)
  o += n
  segs = np.frombuffer(record, "<i2", n, o).astype(np.int16) if packed else None
  return Instance(ids, (flags & 1).astype(bool), types, (flags & 2).astype(bool), segs, label)
