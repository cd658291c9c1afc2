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
from typing import Any

from bertjax.config import TaskDataConfig
from bertjax.data.sources import read_jsonl


class TaskDataError(ValueError):
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


def read_split(split: str, task: str, cfg: TaskDataConfig) -> list[dict]:
  """The examples of one split ("train", "validation", "test") as configured."""
  where = getattr(cfg, split)
  if not where:
    raise TaskDataError(f"data.{split} is not set")
  fmt = resolve_format(where, cfg)
  if fmt == "tfds":
    rows = _tfds_rows(where, cfg)
  else:
    if not Path(where).is_file():
      raise TaskDataError(f"data.{split}: {where} does not exist")
    if fmt == "squad":
      if task != "qa":
        raise TaskDataError(f"{where}: SQuAD JSON is for task=qa, not {task}")
      return read_squad(where)
    if fmt == "conll":
      if task != "token_classification":
        raise TaskDataError(f"{where}: CoNLL files are for task=token_classification")
      return read_conll(where)
    rows = _read_rows(where, fmt, cfg)
  if task == "qa":
    return [_qa_row(r, where, i) for i, r in enumerate(rows)]
  if task == "token_classification":
    return [_token_row(r, where, i, cfg) for i, r in enumerate(rows)]
  return [_text_row(r, where, i, cfg, task) for i, r in enumerate(rows)]


# -- rows ------------------------------------------------------------------------------------


def _read_rows(path: str, fmt: str, cfg: TaskDataConfig) -> list[tuple[int, dict]]:
  """-> [(line number, {field: value})]."""
  if fmt == "jsonl":
    return list(read_jsonl(path, TaskDataError))
  delimiter = "," if fmt == "csv" else "\t"
  quoting = csv.QUOTE_NONE if fmt == "glue" else csv.QUOTE_MINIMAL
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  with open(path, encoding="utf-8", newline="") as f:
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


def _field(row: dict, name: str, path: str, n: int) -> Any:
  if name not in row:
    raise TaskDataError(f"{path}:{n}: no field {name!r} (fields: {', '.join(map(str, row))})")
  return row[name]


def _text_row(item, path: str, i: int, cfg: TaskDataConfig, task: str) -> dict:
  n, row = item
  text = _field(row, cfg.text_field, path, n)
  pair = _field(row, cfg.text_pair_field, path, n) if cfg.text_pair_field else None
  label = row.get(cfg.label_field)
  if label is not None:
    if task == "regression":
      try:
        label = float(label)
      except (TypeError, ValueError):
        raise TaskDataError(f"{path}:{n}: {cfg.label_field}={label!r} is not a number") from None
    elif task == "multi_label":
      if isinstance(label, str):
        label = [x.strip() for x in label.split(cfg.label_separator) if x.strip()]
      label = [str(x) for x in label]
    else:
      label = str(label)
  return {"text": str(text), "text_pair": None if pair is None else str(pair), "label": label,
          "where": f"{path}:{n}"}


def _token_row(item, path: str, i: int, cfg: TaskDataConfig) -> dict:
  n, row = item
  tokens = _field(row, cfg.tokens_field, path, n)
  tags = row.get(cfg.tags_field)
  if tags is not None and len(tags) != len(tokens):
    raise TaskDataError(f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags")
  return {"tokens": [str(t) for t in tokens],
          "tags": None if tags is None else [str(t) for t in tags], "where": f"{path}:{n}"}


def _qa_row(item, path: str, i: int) -> dict:
  n, row = item
  answers = row.get("answers") or {}
  if isinstance(answers, dict):  # HF datasets layout: {"text": [...], "answer_start": [...]}
    answers = [{"text": t, "answer_start": int(s)}
               for t, s in zip(answers.get("text", []), answers.get("answer_start", []))]
  return {"id": str(row.get("id", i)), "question": _field(row, "question", path, n),
          "context": _field(row, "context", path, n), "answers": answers,
          "is_impossible": not answers}


# -- CoNLL and SQuAD ---------------------------------------------------------------------------


def read_conll(path: str) -> list[dict]:
  """token<TAB>tag per line (the first column is the token, the last the tag), a blank line
  between sentences; ``-DOCSTART-`` lines are skipped."""
  sentences, tokens, tags, start = [], [], [], 1
  with open(path, encoding="utf-8") as f:
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
    data = json.loads(Path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise TaskDataError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
  if not isinstance(data, dict) or "data" not in data:
    raise TaskDataError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
  examples = []
  for article in data["data"]:
    for paragraph in article.get("paragraphs", []):
      context = paragraph["context"]
      for qa in paragraph.get("qas", []):
        answers = [{"text": a["text"], "answer_start": int(a["answer_start"])}
                   for a in qa.get("answers", [])]
        impossible = bool(qa.get("is_impossible", False)) or not answers
        for a in answers:
          if context[a["answer_start"]:a["answer_start"] + len(a["text"])] != a["text"]:
            raise TaskDataError(f"{path}: question {qa['id']}: answer {a['text']!r} is not at "
                                f"context[{a['answer_start']}]")
        examples.append({"id": str(qa["id"]), "question": qa["question"], "context": context,
                         "answers": answers, "is_impossible": impossible})
  return examples


# -- labels ----------------------------------------------------------------------------------


def _sort_labels(labels: set[str]) -> list[str]:
  try:
    return sorted(labels, key=float)  # numeric labels ("0", "1", "2") in numeric order
  except ValueError:
    return sorted(labels)


def infer_labels(examples: list[dict], task: str, given: tuple[str, ...] = ()) -> tuple[str, ...]:
  """The label set: ``given`` or the sorted labels of the train examples."""
  if task in ("regression", "qa"):
    return ()
  if given:
    return tuple(given)
  seen: set[str] = set()
  for ex in examples:
    if task == "token_classification":
      seen.update(ex["tags"] or ())
    elif task == "multi_label":
      seen.update(ex["label"] or ())
    elif ex["label"] is not None:
      seen.add(ex["label"])
  if not seen:
    raise TaskDataError("no labels found in the train split (check data.label_field / "
                        "data.tags_field)")
  return tuple(_sort_labels(seen))


def check_labels(examples: list[dict], task: str, labels: tuple[str, ...], split: str) -> None:
  """An eval label that the model cannot predict is an error, not a silent miss."""
  known = set(labels)
  for ex in examples:
    found = (ex.get("tags") if task == "token_classification" else
             ex.get("label") if task == "multi_label" else
             [ex.get("label")] if task == "classification" else None) or []
    for label in found:
      if label is not None and label not in known:
        raise TaskDataError(f"{ex['where']}: {split} label {label!r} is not in the label set "
                            f"{list(labels)} (from the train split or data.labels)")
