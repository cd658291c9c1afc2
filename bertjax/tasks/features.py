"""Examples -> fixed-length numpy features for the sequence and token task types.

Token classification labels the first subword of every word and ignores the rest
(``label = -100``, as BERT's NER recipe and transformers' run_ner do); predictions are read
back at first subwords, and a word that did not fit in ``max_seq_length`` is predicted "O".
"""

from __future__ import annotations

import numpy as np

from bertjax.data.tokenizer import Tokenizer

IGNORE = -100


def _row(encoding, length: int, pad_id: int) -> dict[str, np.ndarray]:
  n = len(encoding.ids)
  out = {"input_ids": np.full(length, pad_id, np.int32),
         "token_type_ids": np.zeros(length, np.int32), "padding_mask": np.zeros(length, bool)}
  out["input_ids"][:n] = encoding.ids
  out["token_type_ids"][:n] = encoding.type_ids
  out["padding_mask"][:n] = True
  return out


def _stack(rows: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def sequence_features(examples: list[dict], tokenizer: Tokenizer,
                      max_length: int) -> dict[str, np.ndarray]:
  """Single / pair inputs (longest-first truncation); the task type adds the label."""
  texts = tokenizer.tokenize_batch([ex["text"] for ex in examples])
  pairs = (tokenizer.tokenize_batch([ex["text_pair"] or "" for ex in examples])
           if any(ex["text_pair"] is not None for ex in examples) else None)
  rows = []
  for i, ex in enumerate(examples):
    b = pairs[i] if pairs is not None and ex["text_pair"] is not None else None
    rows.append(_row(tokenizer.build(texts[i], b, max_length=max_length), max_length,
                     tokenizer.pad_id))
  return _stack(rows)


def tokenize_words(tokenizer: Tokenizer, words: list[str]) -> list[list[int]]:
  """Subword ids of each pre-split word. Byte-level BPE sees each word with a leading space, as
  it does inside running text (transformers' ``add_prefix_space=True``)."""
  texts = [" " + w if tokenizer.roberta_template else w for w in words]
  return [list(ids) for ids, _, _ in tokenizer.tokenize_batch(texts)]


def token_features(examples: list[dict], tokenizer: Tokenizer, labels: tuple[str, ...],
                   max_length: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
  """-> (features with per-token ``label``, per example the token index of each word's first
  subword, -1 where the word was cut off or has no subwords)."""
  index = {name: i for i, name in enumerate(labels)}
  budget = max_length - tokenizer.num_special_tokens[0]
  rows, word_starts = [], []
  for ex in examples:
    ids, label_row, starts = [], [], np.full(len(ex["tokens"]), -1, np.int64)
    for w, pieces in enumerate(tokenize_words(tokenizer, ex["tokens"])):
      if not pieces or len(ids) + len(pieces) > budget:
        if pieces:
          break  # the rest does not fit
        continue
      starts[w] = len(ids) + 1  # +1: the [CLS] / <s> in front
      tag = ex["tags"][w] if ex["tags"] is not None else None
      label_row += [index[tag] if tag is not None else IGNORE] + [IGNORE] * (len(pieces) - 1)
      ids += pieces
    enc = tokenizer.build((ids, [(0, 0)] * len(ids), [None] * len(ids)), max_length=max_length)
    row = _row(enc, max_length, tokenizer.pad_id)
    row["label"] = np.full(max_length, IGNORE, np.int32)
    row["label"][1:1 + len(label_row)] = label_row
    rows.append(row)
    word_starts.append(starts)
  return _stack(rows), word_starts


def word_predictions(logits: np.ndarray, word_starts: list[np.ndarray],
                     labels: tuple[str, ...]) -> list[list[str]]:
  """Per-token logits [N, len, labels] -> tags per word (first subword; cut-off words -> O)."""
  out = []
  outside = "O" if "O" in labels else labels[0]
  for row, starts in zip(np.argmax(logits, axis=-1), word_starts):
    out.append([labels[row[s]] if s >= 0 else outside for s in starts])
  return out
