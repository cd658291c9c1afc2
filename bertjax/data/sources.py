"""Text sources -> streams of documents (blocks of paragraphs), and the held-out split.

Layout of text files (the layout BERT's create_pretraining_data.py reads): one paragraph per
line, a blank line between documents. JSONL: one document per line, its text in a field. Either
may be compressed (.xz, .gz, .zst) and local or on object storage (read as a stream). TFDS:
``tfds.data_source`` (array_record, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import io
import json
import lzma
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from bertjax.errors import UserError

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


class DataError(UserError):
  """Unreadable or unusable pretraining text; names the file (and line)."""


def corpus_files() -> list[Path]:
  """The public-domain corpus shipped inside the package (Austen, Dickens, Wells, Verne, KJV)."""
  return sorted(CORPUS_DIR.glob("*.txt.xz"))


def json_object(line: str, where: str, error: type[ValueError] = DataError) -> dict:
  """One JSONL line as a dict; anything else raises ``error`` naming ``where``."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise error(f"{where}: invalid JSON ({e.msg})") from None
  if not isinstance(record, dict):
    raise error(f"{where}: expected a JSON object per line")
  return record


def read_jsonl(path: str | Path, error: type[ValueError] = DataError) -> Iterator[tuple[int, dict]]:
  """(line number, object) per non-blank line; a bad line raises ``error`` naming file:line."""
  from bertjax import storage

  n = 0
  try:
    with storage.as_path(path).open(encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          yield n, json_object(line, f"{path}:{n}", error)
  except UnicodeDecodeError as e:
    raise error(f"{path}:{n + 1}: not UTF-8 text ({e.reason})") from None


def tfds_data_source(name: str, split: str, data_dir: str | None):
  """-> (random-access records of ``name``/``split``, the dataset's feature spec)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("TFDS sources need tensorflow-datasets (pip install "
                    "tensorflow-datasets; TensorFlow itself is not needed)") from None
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return source, tfds.builder(name, data_dir=data_dir).info.features


def read_documents(source: str, *, text_field: str = "text", tfds_split: str = "train",
                   tfds_data_dir: str | None = None) -> list[list[str]]:
  """All of ``data.source``'s document blocks in memory (small corpora, tests)."""
  kw = dict(tfds_split=tfds_split, tfds_data_dir=tfds_data_dir)
  return [block for unit in plan_units(source, **kw)
          for block in unit_documents(unit, text_field=text_field, **kw)]


# Sentence boundaries: terminal punctuation (plus closing quotes/brackets), whitespace, then
# an opening quote or a capital. Common abbreviations do not end a sentence.
_BOUNDARY = re.compile(r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Messrs.", "Capt.", "Col.", "Sir.", "Mme.",
                  "Mlle.", "Rev.", "Prof.", "No.", "vs.", "etc.", "i.e.", "e.g.")


def split_sentences(paragraph: str) -> list[str]:
  parts = _BOUNDARY.split(paragraph)
  sentences, current = [], ""
  for i in range(0, len(parts), 2):
    current += parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
    if i + 1 < len(parts) and current.rstrip().endswith(_ABBREVIATIONS):
      current += " "
      continue
    if current.strip():
      sentences.append(current.strip())
    current = ""
  if current.strip():
    sentences.append(current.strip())
  return sentences


def documents_to_sentences(docs: list[list[str]]) -> list[list[str]]:
  return [[s for p in doc for s in split_sentences(p)] for doc in docs]


# -- streaming: the input as work units --------------------------------------------------------
# ``prepare-data`` and the in-memory corpus read the input as a list of *units* (a whole
# compressed file, a byte range of an uncompressed file, or a range of TFDS records), each read
# as a stream of document blocks. A unit is the unit of parallel work, of random seeding and of
# resumption, so the result depends on the seed and the unit size, never on how many processes
# or hosts did the work.

UNIT_BYTES = 64 << 20  # byte range of an uncompressed file per unit
TFDS_UNIT_RECORDS = 20_000
BLOCK = 64  # paragraphs per document block (the held-out split's granularity)
COMPRESSED = (".xz", ".gz", ".zst")
TEXT_NAMES = (".txt", ".text", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Unit:
  path: str  # a file, or tfds:NAME
  kind: str  # text | jsonl | tfds
  start: int = 0  # byte offset (records for tfds)
  end: int = -1  # exclusive; -1 = to the end (a compressed file is one unit)


def _bare_name(name: str) -> str:
  for suffix in COMPRESSED:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _is_input(name: str) -> bool:
  bare = _bare_name(name)
  return bare.endswith(TEXT_NAMES) or (bare != name and "." not in bare)  # books.xz: text


def _file_size(path) -> int:
  from bertjax import storage

  p = storage.as_path(path)
  return p.stat().length if storage.is_url(p) else p.stat().st_size


def require_source(source: str) -> None:
  """A preset for real pretraining leaves ``data.source`` empty: the user names their corpus."""
  if not source:
    raise DataError("data.source is not set: point it at your corpus (text or JSONL files, a "
                    "folder of them, gs://..., tfds:NAME) or a `bertjax prepare-data` folder "
                    "(data.source=corpus is the small demo corpus shipped with bertjax)")


def is_builtin(source: str) -> bool:
  """The shipped corpus or a TFDS name (not a path)."""
  return source == "corpus" or source.startswith("tfds:")


def plan_units(source: str, *, tfds_split: str = "train", tfds_data_dir: str | None = None,
               unit_bytes: int | None = None) -> list[Unit]:
  """``data.source`` -> the work units, in a fixed order (files sorted by name)."""
  from bertjax import storage

  unit_bytes = unit_bytes or UNIT_BYTES
  if source == "corpus":
    return [Unit(str(p), "text") for p in corpus_files()]
  if source.startswith("tfds:"):
    n = len(tfds_data_source(source[5:], tfds_split, tfds_data_dir)[0])
    return [Unit(source, "tfds", s, min(s + TFDS_UNIT_RECORDS, n))
            for s in range(0, n, TFDS_UNIT_RECORDS)]
  path = storage.as_path(source)
  if not storage.exists(path):
    raise DataError(f"data.source {source} does not exist")
  if path.is_dir():
    files = [f for f in storage.files_under(path) if _is_input(f.name)]
    if not files:
      raise DataError(f"data.source {source}: no .txt or .jsonl files (optionally .gz, .xz, "
                      ".zst) in the folder")
  else:
    files = [path]
  units = []
  for f in files:
    kind = "jsonl" if _bare_name(f.name).endswith(".jsonl") else "text"
    if f.name.endswith(COMPRESSED):
      units.append(Unit(str(f), kind))
      continue
    size = _file_size(f)
    units += [Unit(str(f), kind, s, min(s + unit_bytes, size))
              for s in range(0, max(size, 1), unit_bytes)]
  return units


def _open_binary(path: str):
  """A binary stream of the file's bytes, decompressed (.xz / .gz / .zst), local or remote."""
  import gzip

  from bertjax import storage

  raw = storage.as_path(path).open("rb")
  if path.endswith(".xz"):
    return lzma.open(raw)
  if path.endswith(".gz"):
    return gzip.open(raw)
  if path.endswith(".zst"):
    return io.BufferedReader(_ZstdReader(raw, path))
  return raw


class _ZstdReader(io.RawIOBase):
  """Decompressed .zst frames one after another; unlike zstandard's ``stream_reader``, a file
  that ends inside a frame (truncated) is an error, not a quiet end of the text."""

  def __init__(self, raw, path: str):
    try:
      import zstandard
    except ImportError:
      raise DataError(f"{path}: .zst input needs zstandard (pip install zstandard)") from None
    self._frame = zstandard.ZstdDecompressor().decompressobj
    self.raw, self.path = raw, path
    self.d, self.inside = self._frame(), False  # inside: a frame has begun and not ended
    self.out, self.pos = b"", 0

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while self.pos == len(self.out):
      data = self.raw.read(1 << 20)
      if not data:
        if self.inside:
          raise DataError(f"{self.path}: not a readable .zst file (it ends inside a frame: "
                          "truncated)")
        return 0
      pieces = []
      while data:
        pieces.append(self.d.decompress(data))
        self.inside = True
        if not self.d.eof:
          break
        data, self.d, self.inside = self.d.unused_data, self._frame(), False
      self.out, self.pos = b"".join(pieces), 0
    n = min(len(buffer), len(self.out) - self.pos)
    buffer[:n] = self.out[self.pos:self.pos + n]
    self.pos += n
    return n

  def close(self) -> None:
    self.raw.close()
    super().close()


def _lines(unit: Unit) -> Iterator[tuple[str, int, str]]:
  """(where, byte offset, decoded line) of the lines that start at or after ``unit.start``
  (the caller decides where the unit ends); a bad byte or stream names the file and line."""
  n, pos = 0, unit.start
  where = lambda: f"{unit.path}:{n}" if unit.start == 0 else f"{unit.path} (byte {pos})"
  try:
    with _open_binary(unit.path) as f:
      if unit.start > 0:
        f.seek(unit.start - 1)
        pos = unit.start - 1 + len(f.readline())  # to the first line starting in the unit
      for raw in f:
        n += 1
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(f"{where()}: not UTF-8 text ({e.reason}); convert the file to "
                          "UTF-8") from None
        yield where(), pos, line
        pos += len(raw)
  except DataError:
    raise
  except Exception as e:  # a broken stream: lzma, gzip (OSError), zstandard (ZstdError)
    if isinstance(e, FileNotFoundError):
      raise DataError(f"{unit.path} does not exist") from None
    if not isinstance(e, (lzma.LZMAError, EOFError, OSError)) and type(e).__name__ != "ZstdError":
      raise
    raise DataError(f"{unit.path}: not a readable {Path(unit.path).suffix or 'text'} file "
                    f"({e})") from None


def _blocks(paragraphs: list[str]) -> Iterator[list[str]]:
  for s in range(0, len(paragraphs), BLOCK):
    yield paragraphs[s:s + BLOCK]


def _text_unit_documents(unit: Unit) -> Iterator[list[str]]:
  """One paragraph per line, a blank line between documents. A document belongs to the unit
  where the blank line just before it starts (the file's first document: the first unit), so
  byte-range units split a file into whole documents, each read exactly once."""
  owned = unit.start == 0
  doc: list[str] = []
  for _, pos, line in _lines(unit):
    line = line.strip()
    if not line:
      if doc:
        yield doc
        doc = []
      if unit.end >= 0 and pos >= unit.end:
        return
      owned = True
    elif owned:
      doc.append(line)
      if len(doc) == BLOCK:
        yield doc
        doc = []
  if doc:
    yield doc


def _paragraphs(text: str) -> list[str]:
  return [p.strip() for p in text.split("\n") if p.strip()]


def _jsonl_unit_documents(unit: Unit, field: str) -> Iterator[list[str]]:
  """One document per line (the lines that start inside the unit)."""
  for where, pos, line in _lines(unit):
    if unit.end >= 0 and pos >= unit.end:
      return
    if not line.strip():
      continue
    record = json_object(line, where)
    if field not in record:
      raise DataError(f"{where}: no field {field!r} (set data.text_field)")
    if not isinstance(record[field], str):
      raise DataError(f"{where}: field {field!r} is {json.dumps(record[field])[:40]}, not a "
                      "string")
    yield from _blocks(_paragraphs(record[field]))


def _tfds_unit_documents(unit: Unit, field: str, split: str,
                         data_dir: str | None) -> Iterator[list[str]]:
  source, _ = tfds_data_source(unit.path[5:], split, data_dir)
  for i in range(unit.start, unit.end):
    value = source[i][field]
    yield from _blocks(_paragraphs(value.decode("utf-8") if isinstance(value, bytes)
                                   else str(value)))


def unit_documents(unit: Unit, *, text_field: str = "text", tfds_split: str = "train",
                   tfds_data_dir: str | None = None) -> Iterator[list[str]]:
  """The unit's documents as blocks of at most ``BLOCK`` paragraphs, streamed."""
  if unit.kind == "tfds":
    return _tfds_unit_documents(unit, text_field, tfds_split, tfds_data_dir)
  if unit.kind == "jsonl":
    return _jsonl_unit_documents(unit, text_field)
  return _text_unit_documents(unit)


def heldout_blocks(blocks: Iterator[list[str]], split: str, fraction: float, seed: int,
                   unit_index: int) -> Iterator[list[str]]:
  """The unit's blocks of ``split`` ("train" or "eval"): each block is held out with
  probability ``fraction`` (a draw per block from the unit's own seed, so both splits read
  the unit independently and agree). If nothing of unit 0 is held out, its last block goes to
  evaluation, so a tiny corpus still has a held-out part."""
  rng = np.random.default_rng([seed, 7, unit_index])
  held, last = False, None
  for block in blocks:
    to_eval = rng.random() < fraction
    held |= to_eval
    if split == "eval":
      if to_eval:
        yield block
      last = block
    elif not to_eval:
      if last is not None:
        yield last  # one block behind: the first unit's last block may go to evaluation
      last = block
  fallback = unit_index == 0 and not held and last is not None
  if (split == "eval") == fallback and last is not None:
    yield last
