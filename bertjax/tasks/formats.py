"""Labeled-data readers: JSONL / CSV / TSV / GLUE TSV rows, CoNLL token<TAB>tag sentences,
SQuAD v1.1/v2.0 JSON and TFDS ``data_source`` splits -> plain Python examples.

Classification example: ``{"text", "text_pair", "label"}``; token classification:
``{"tokens", "tags"}``; QA: ``{"id", "question", "context", "answers": [{"text",
"answer_start"}], "is_impossible"}``. Every error names the file (and line) and the field.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable

from bertjax import storage
from bertjax.config import TaskDataConfig
from bertjax.errors import UserError
from bertjax.data.sources import read_jsonl


class TaskDataError(UserError):
  """Bad labeled data; one line naming the file, line and field."""


_SUFFIX_FORMAT = {".jsonl": "jsonl", ".json": "squad", ".csv": "csv", ".tsv": "tsv",
                  ".conll": "conll", ".txt": "conll", ".iob": "conll", ".bio": "conll"}


def resolve_format(path: str, cfg: TaskDataConfig) -> str:
  if cfg.format != "auto":
    return cfg.format
  fmt = _SUFFIX_FORMAT.get(Path(path).suffix.lower())
  if fmt is None:
    raise TaskDataError(f"{path}: cannot tell the format from the suffix; set data.format "
                        f"(jsonl, csv, tsv, glue, conll, squad, tfds)")
  return fmt


PACKAGED = Path(__file__).resolve().parent.parent / "data" / "tasks"  # data/tasks/README.md


def packaged_datasets() -> list[str]:
  return sorted(p.name for p in PACKAGED.iterdir() if p.is_dir())


def split_source(split: str, cfg: TaskDataConfig) -> str:
  """Where a split comes from: ``data.<split>`` if set, else the packaged ``data.dataset``'s
  file for it ("" when neither has one)."""
  where = getattr(cfg, split)
  if where or not cfg.dataset:
    return where
  folder = PACKAGED / cfg.dataset
  if not folder.is_dir():
    raise TaskDataError(f"data.dataset={cfg.dataset} is not shipped with bertjax; use "
                        f"{', '.join(packaged_datasets())} or set data.{split} to a file")
  files = sorted(folder.glob(f"{split}.*"))
  return str(files[0]) if files else ""


def data_file(text: str) -> str:
  """A file argument (evaluate / predict): a path, or ``NAME:SPLIT`` for a packaged split
  (``rt-polarity:test``)."""
  name, _, split = text.partition(":")
  if storage.is_url(text) or Path(text).exists() or not split or not (PACKAGED / name).is_dir():
    return text
  found = sorted((PACKAGED / name).glob(f"{split}.*"))
  if not found:
    raise TaskDataError(f"{text}: the packaged {name} has no {split} split")
  return str(found[0])


# Whole-file formats: a task type reads them with its own reader (``file_readers``).
_WHOLE_FILE = {"squad": "SQuAD JSON", "conll": "CoNLL"}


def read_split(split: str, task, cfg: TaskDataConfig) -> list[dict]:
  """The examples of one split ("train", "validation", "test") as configured, each made by
  ``task`` (a ``TaskType``) from its row."""
  where = split_source(split, cfg)
  if not where:
    raise TaskDataError(f"data.{split} is not set")
  fmt = resolve_format(where, cfg)
  if fmt == "tfds":
    rows = _tfds_rows(where, cfg)
  else:
    if not storage.as_path(where).is_file():
      raise TaskDataError(f"data.{split}: {where} does not exist")
    if fmt in _WHOLE_FILE:
      if fmt not in task.file_readers:
        raise TaskDataError(f"{where}: {_WHOLE_FILE[fmt]} files are not data for "
                            f"task={task.name} (data.format={fmt})")
      return task.file_readers[fmt](where)
    rows = read_rows(where, fmt, cfg)
  examples = [task.example(r, where, i, cfg) for i, r in enumerate(rows)]
  if task.label_key:
    _check_labelled(examples, split, task.label_key, cfg)
  return examples


def _check_labelled(examples: list[dict], split: str, key: str, cfg: TaskDataConfig) -> None:
  """Training needs every label; an eval file is labelled throughout or not at all. ``key``
  is the example's label field ("label", "tags"), named in the config by data.<key>_field."""
  unlabelled = [ex for ex in examples if ex[key] is None]
  if unlabelled and (split == "train" or len(unlabelled) < len(examples)):
    why = "training needs a label on every example" if split == "train" else \
        "other examples of this file have one"
    raise TaskDataError(f"{unlabelled[0]['where']}: no {getattr(cfg, key + '_field')!r} "
                        f"({why}; check data.{key}_field)")


# -- rows ------------------------------------------------------------------------------------


def read_rows(path: str, fmt: str, cfg: TaskDataConfig) -> list[tuple[int, dict]]:
  """-> [(line number, {field: value})]."""
  if fmt == "jsonl":
    return list(read_jsonl(path, TaskDataError))
  delimiter = "," if fmt == "csv" else "\t"
  quoting = csv.QUOTE_NONE if fmt == "glue" else csv.QUOTE_MINIMAL
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  with storage.as_path(path).open(encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    lines = list(reader)
  if cfg.header:
    if not lines:
      raise TaskDataError(f"{path}: empty file (data.header=true expects a header row)")
    names, body, first = lines[0], lines[1:], 2
  else:
    width = max((len(r) for r in lines), default=0)
    names, body, first = [str(i) for i in range(width)], lines, 1
  rows = []
  for n, values in enumerate(body, first):
    if not values:
      continue
    if len(values) != len(names):
      raise TaskDataError(f"{path}:{n}: {len(values)} columns, the header has {len(names)}")
    rows.append((n, dict(zip(names, values))))
  return rows


def _tfds_rows(split: str, cfg: TaskDataConfig) -> list[tuple[int, dict]]:
  if not cfg.tfds_name:
    raise TaskDataError("data.format=tfds needs data.tfds_name")
  from bertjax.data.sources import tfds_data_source

  source, features = tfds_data_source(cfg.tfds_name, split, cfg.tfds_data_dir)
  names = {}
  try:
    label_feature = features[cfg.label_field]
  except (KeyError, TypeError):
    label_feature = None
  if label_feature is not None and hasattr(label_feature, "names"):
    names = dict(enumerate(label_feature.names))  # ClassLabel ids -> names
  rows = []
  for i in range(len(source)):
    row = {k: _decode(v) for k, v in dict(source[i]).items()}
    if names and cfg.label_field in row:
      row[cfg.label_field] = names[int(row[cfg.label_field])]
    rows.append((i, row))
  return rows


def _decode(v: Any) -> Any:
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if hasattr(v, "tolist"):
    v = v.tolist()
  if isinstance(v, list):
    return [_decode(x) for x in v]
  return v


def _field(row: dict, name: str, where: str) -> Any:
  if name not in row:
    raise TaskDataError(f"{where}: no field {name!r} (fields: {', '.join(map(str, row))})")
  return row[name]


def _string(row: dict, name: str, where: str) -> str:
  value = _field(row, name, where)
  if not isinstance(value, str):
    raise TaskDataError(f"{where}: field {name!r} is {shown(value)}, not a string")
  return value


def _strings(row: dict, name: str, where: str) -> list[str]:
  value = _field(row, name, where)
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise TaskDataError(f"{where}: field {name!r} is {shown(value)}, not a list of strings")
  return value


def shown(value: Any) -> str:
  return json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])


def text_example(item: tuple[int, dict], path: str, cfg: TaskDataConfig,
                 parse_label: Callable[[Any, str, TaskDataConfig], Any]) -> dict:
  """A text (pair) row -> ``{"text", "text_pair", "label", "where"}``; ``parse_label(raw,
  where, cfg)`` gives the label its task's form (None: unlabelled)."""
  n, row = item
  where = f"{path}:{n}"
  text = _string(row, cfg.text_field, where)
  pair = _string(row, cfg.text_pair_field, where) if cfg.text_pair_field else None
  raw = row.get(cfg.label_field)
  return {"text": text, "text_pair": pair,
          "label": None if raw is None else parse_label(raw, where, cfg), "where": where}


def token_example(item: tuple[int, dict], path: str, cfg: TaskDataConfig) -> dict:
  """A row of ``tokens_field`` and ``tags_field`` lists -> ``{"tokens", "tags", "where"}``."""
  n, row = item
  tokens = _strings(row, cfg.tokens_field, f"{path}:{n}")
  tags = (_strings(row, cfg.tags_field, f"{path}:{n}") if row.get(cfg.tags_field) is not None
          else None)
  if tags is not None and len(tags) != len(tokens):
    raise TaskDataError(f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags")
  return {"tokens": tokens, "tags": tags, "where": f"{path}:{n}"}


def qa_example(item: tuple[int, dict], path: str, i: int) -> dict:
  """A row of ``question``, ``context`` and ``answers`` (SQuAD's or HF datasets' layout); the
  id is the row's ``id`` or its index."""
  n, row = item
  where = f"{path}:{n}"
  question, context = _string(row, "question", where), _string(row, "context", where)
  answers = row.get("answers") or {}
  if isinstance(answers, dict):  # HF datasets layout: {"text": [...], "answer_start": [...]}
    texts, starts = answers.get("text", []), answers.get("answer_start", [])
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
      raise TaskDataError(f"{where}: answers needs equally long 'text' and 'answer_start' lists")
    answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
  if not isinstance(answers, list):
    raise TaskDataError(f"{where}: answers is {shown(answers)}, not a list")
  answers = [_answer(a, context, where) for a in answers]
  return {"id": str(row.get("id", i)), "question": question, "context": context,
          "answers": answers, "is_impossible": not answers}


def _answer(answer: Any, context: str, where: str) -> dict:
  """``{"text", "answer_start"}``, checked against the context it points into."""
  if not isinstance(answer, dict) or not isinstance(answer.get("text"), str) or \
      not isinstance(answer.get("answer_start"), int) or isinstance(answer["answer_start"], bool):
    raise TaskDataError(f"{where}: answer {shown(answer)} needs a string 'text' and an "
                        "integer 'answer_start'")
  start, text = answer["answer_start"], answer["text"]
  if start < 0 or context[start:start + len(text)] != text:
    raise TaskDataError(f"{where}: answer {text!r} is not at context[{start}]")
  return {"text": text, "answer_start": start}


# -- CoNLL and SQuAD ---------------------------------------------------------------------------


def read_conll(path: str) -> list[dict]:
  """token<TAB>tag per line (the first column is the token, the last the tag), a blank line
  between sentences; ``-DOCSTART-`` lines are skipped."""
  sentences, tokens, tags, start = [], [], [], 1
  with storage.as_path(path).open(encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\n").rstrip("\r")
      if not line.strip():
        if tokens:
          sentences.append({"tokens": tokens, "tags": tags, "where": f"{path}:{start}"})
        tokens, tags, start = [], [], n + 1
        continue
      cols = line.split("\t") if "\t" in line else line.split()
      if cols[0] == "-DOCSTART-":
        continue
      if len(cols) < 2:
        raise TaskDataError(f"{path}:{n}: expected token<TAB>tag, got {line!r}")
      tokens.append(cols[0])
      tags.append(cols[-1])
  if tokens:
    sentences.append({"tokens": tokens, "tags": tags, "where": f"{path}:{start}"})
  return sentences


def read_squad(path: str) -> list[dict]:
  """SQuAD v1.1 / v2.0 JSON -> one example per question."""
  try:
    data = json.loads(storage.as_path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise TaskDataError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
  except UnicodeDecodeError as e:
    raise TaskDataError(f"{path}: not UTF-8 text ({e.reason})") from None
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise TaskDataError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
  examples = []
  for i, article in enumerate(data["data"]):
    for j, paragraph in enumerate(_items(article, "paragraphs", f"{path}: data[{i}]")):
      where = f"{path}: data[{i}].paragraphs[{j}]"
      if not isinstance(paragraph, dict):
        raise TaskDataError(f"{where} is not an object")
      context = _string(paragraph, "context", where)
      for k, qa in enumerate(_items(paragraph, "qas", where)):
        at = f"{where}.qas[{k}]"
        if not isinstance(qa, dict) or "id" not in qa:
          raise TaskDataError(f"{at}: a question needs an 'id'")
        question = _string(qa, "question", f"{at} (id {qa['id']})")
        answers = [_answer(a, context, f"{path}: question {qa['id']}")
                   for a in _items(qa, "answers", at)]
        impossible = bool(qa.get("is_impossible", False)) or not answers
        examples.append({"id": str(qa["id"]), "question": question, "context": context,
                         "answers": answers, "is_impossible": impossible})
  return examples


def _items(parent: Any, key: str, where: str) -> list:
  value = parent.get(key, []) if isinstance(parent, dict) else None
  if not isinstance(value, list):
    raise TaskDataError(f"{where}: {key!r} is not a list")
  return value


# -- labels ----------------------------------------------------------------------------------


def _sort_labels(labels: set[str]) -> list[str]:
  try:
    return sorted(labels, key=float)  # numeric labels ("0", "1", "2") in numeric order
  except ValueError:
    return sorted(labels)


def infer_labels(examples: list[dict], task, given: tuple[str, ...] = ()) -> tuple[str, ...]:
  """The label set of ``task`` (a ``TaskType``): ``given`` or the sorted labels of the train
  examples; () for a type without one."""
  if not task.has_label_set:
    return ()
  if given:
    return tuple(given)
  seen = {label for ex in examples for label in task.labels_of(ex) if label is not None}
  if not seen:
    raise TaskDataError("no labels found in the train split (check data.label_field / "
                        "data.tags_field)")
  return tuple(_sort_labels(seen))


def check_labels(examples: list[dict], task, labels: tuple[str, ...], split: str) -> None:
  """An eval label that the model cannot predict is an error, not a silent miss."""
  if not task.has_label_set:
    return
  known = set(labels)
  for ex in examples:
    for label in task.labels_of(ex):
      if label is not None and label not in known:
        raise TaskDataError(f"{ex['where']}: {split} label {label!r} is not in the label set "
                            f"{list(labels)} (from the train split or data.labels)")
