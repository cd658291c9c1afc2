"""Text sources -> documents (lists of sentences), and the held-out split.

Layout of text files (the layout BERT's create_pretraining_data.py reads): one paragraph per
line, a blank line between documents. JSONL: one document per line, its text in a field.
TFDS: ``tfds.data_source`` (array_record, no TensorFlow).
"""

from __future__ import annotations

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


def _open_text(path: Path) -> Iterator[str]:
  """The lines of a UTF-8 text file (.xz compressed or not); a bad byte names file:line."""
  opener = lzma.open if path.suffix == ".xz" else open
  n = 0
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        yield line
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{n + 1}: not UTF-8 text ({e.reason}); convert the file to "
                    "UTF-8") from None
  except (lzma.LZMAError, EOFError) as e:
    raise DataError(f"{path}: not a readable .xz file ({e})") from None


def read_text_documents(paths: list[Path]) -> list[list[str]]:
  """Documents as lists of paragraphs; blank lines separate documents."""
  docs: list[list[str]] = []
  for path in paths:
    current: list[str] = []
    for line in _open_text(path):
      line = line.strip()
      if line:
        current.append(line)
      elif current:
        docs.append(current)
        current = []
    if current:
      docs.append(current)
  return docs


def read_jsonl(path: str | Path, error: type[ValueError] = DataError) -> Iterator[tuple[int, dict]]:
  """(line number, object) per non-blank line; a bad line raises ``error`` naming file:line."""
  from bertjax import storage

  n = 0
  try:
    with storage.as_path(path).open(encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise error(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
          raise error(f"{path}:{n}: expected a JSON object per line")
        yield n, record
  except UnicodeDecodeError as e:
    raise error(f"{path}:{n + 1}: not UTF-8 text ({e.reason})") from None


def read_jsonl_documents(path: Path, field: str) -> list[list[str]]:
  docs = []
  for n, record in read_jsonl(path):
    if field not in record:
      raise DataError(f"{path}:{n}: no field {field!r} (set data.text_field)")
    if not isinstance(record[field], str):
      raise DataError(f"{path}:{n}: field {field!r} is {json.dumps(record[field])[:40]}, not a "
                      "string")
    paragraphs = [p.strip() for p in record[field].split("\n") if p.strip()]
    if paragraphs:
      docs.append(paragraphs)
  return docs


def tfds_data_source(name: str, split: str, data_dir: str | None):
  """-> (random-access records of ``name``/``split``, the dataset's feature spec)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("TFDS sources need tensorflow-datasets (pip install "
                    "tensorflow-datasets; TensorFlow itself is not needed)") from None
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return source, tfds.builder(name, data_dir=data_dir).info.features


def read_tfds_documents(name: str, split: str, field: str, data_dir: str | None) -> list[list[str]]:
  source, _ = tfds_data_source(name, split, data_dir)
  docs = []
  for i in range(len(source)):
    value = source[i][field]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    paragraphs = [p.strip() for p in text.split("\n") if p.strip()]
    if paragraphs:
      docs.append(paragraphs)
  return docs


def read_documents(source: str, *, text_field: str = "text", tfds_split: str = "train",
                   tfds_data_dir: str | None = None) -> list[list[str]]:
  """Resolve ``data.source`` to documents of paragraphs."""
  if source == "corpus":
    return read_text_documents(corpus_files())
  if source.startswith("tfds:"):
    return read_tfds_documents(source[5:], tfds_split, text_field, tfds_data_dir)
  from bertjax import storage

  if storage.is_url(source):  # object storage: read from a local copy (text is read whole)
    if not storage.exists(source):
      raise DataError(f"data.source {source} does not exist")
    source = str(storage.local_copy(source))
  path = Path(source)
  if not path.exists():
    raise DataError(f"data.source {source} does not exist")
  if path.is_dir():
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".xz") and p.is_file())
    if not files:
      raise DataError(f"data.source {source}: no .txt files in the folder")
    return read_text_documents(files)
  if path.suffix == ".jsonl":
    return read_jsonl_documents(path, text_field)
  return read_text_documents([path])


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


def split_heldout(docs: list[list[str]], fraction: float, seed: int,
                  block: int = 64) -> tuple[list[list[str]], list[list[str]]]:
  """Hold out whole contiguous blocks of ``block`` paragraphs (never seen in training).

  Blocks, not documents, so that a corpus of a few long books still has a held-out part."""
  if fraction <= 0:
    return docs, []
  rng = np.random.default_rng([seed, 7])
  train, heldout = [], []
  for doc in docs:
    for start in range(0, len(doc), block):
      piece = doc[start:start + block]
      (heldout if rng.random() < fraction else train).append(piece)
  if not heldout:  # tiny corpora: take the last block
    heldout.append(train.pop())
  return train, heldout
