"""Extractive QA as google-research/bert run_squad.py does it, with character offsets.

Features: question (cut to ``max_query_length`` tokens) + a window of the context; windows
start every ``doc_stride`` tokens until the context is covered. Training labels mark the
answer's first and last token, or [CLS] (index 0) when the answer is not inside the window or
the question is unanswerable. Post-processing: the ``n_best_size`` top start and end logits of
every window, spans inside the context, ``end >= start``, at most ``max_answer_length`` tokens,
start token in its max-context window; the answer text is the context between the span's
character offsets. SQuAD 2.0 predicts "" when null score - best span score > threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertjax.data.tokenizer import Tokenizer
from bertjax.errors import UserError


@dataclasses.dataclass
class QaFeatures:
  arrays: dict[str, np.ndarray]  # input_ids, token_type_ids, padding_mask, start/end_position
  example_index: np.ndarray  # [features] -> index into the examples
  token_to_char: list[np.ndarray]  # per feature [len, 2] context char span; -1 off-context
  max_context: list[np.ndarray]  # per feature [len] bool: this window is the token's best


def _windows(num_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
  """run_squad's doc spans: (start, length) every ``stride`` tokens until the end is covered."""
  spans, start = [], 0
  while True:
    length = min(num_tokens - start, max_tokens)
    spans.append((start, length))
    if start + length >= num_tokens:
      return spans
    start += min(length, stride)


def _is_max_context(spans, index: int, position: int) -> bool:
  """run_squad ``_check_is_max_context``: the window where the token has the most context
  (min of left and right context + 0.01 * window length)."""
  best, best_index = None, None
  for i, (start, length) in enumerate(spans):
    end = start + length - 1
    if position < start or position > end:
      continue
    score = min(position - start, end - position) + 0.01 * length
    if best is None or score > best:
      best, best_index = score, i
  return best_index == index


def _answer_tokens(offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
  """First and last context token overlapping [start_char, end_char)."""
  first = next((i for i, (a, b) in enumerate(offsets) if b > start_char and b > a), None)
  last = next((i for i in range(len(offsets) - 1, -1, -1)
               if offsets[i][0] < end_char and offsets[i][1] > offsets[i][0]), None)
  if first is None or last is None or last < first:
    return None
  return first, last


def qa_features(examples: list[dict], tokenizer: Tokenizer, *, max_length: int, doc_stride: int,
                max_query_length: int) -> QaFeatures:
  questions = tokenizer.tokenize_batch([ex["question"] for ex in examples])
  contexts = tokenizer.tokenize_batch([ex["context"] for ex in examples])
  rows, example_index, token_to_char, max_context = [], [], [], []
  for e, ex in enumerate(examples):
    q = [list(x)[:max_query_length] for x in questions[e]]
    c_ids, c_offsets, c_words = (list(x) for x in contexts[e])
    max_tokens = max_length - len(q[0]) - tokenizer.num_special_tokens[1]
    if max_tokens < 1:
      raise UserError(f"data.max_seq_length={max_length} leaves no room for the context "
                       f"after a {len(q[0])}-token question")
    answer = None
    if ex["answers"] and not ex.get("is_impossible"):
      a = ex["answers"][0]
      answer = _answer_tokens(c_offsets, a["answer_start"], a["answer_start"] + len(a["text"]))
    spans = _windows(len(c_ids), max_tokens, doc_stride)
    for w, (start, length) in enumerate(spans):
      seg = (c_ids[start:start + length], c_offsets[start:start + length],
             c_words[start:start + length])
      enc = tokenizer.build(q, seg)
      n = len(enc.ids)
      row = {"input_ids": np.full(max_length, tokenizer.pad_id, np.int32),
             "token_type_ids": np.zeros(max_length, np.int32),
             "padding_mask": np.zeros(max_length, bool)}
      row["input_ids"][:n], row["token_type_ids"][:n], row["padding_mask"][:n] = \
          enc.ids, enc.type_ids, True
      chars = np.full((max_length, 2), -1, np.int64)
      best = np.zeros(max_length, bool)
      first_ctx = enc.sequence_ids.index(1) if 1 in enc.sequence_ids else n
      for j in range(length):
        chars[first_ctx + j] = c_offsets[start + j]
        best[first_ctx + j] = _is_max_context(spans, w, start + j)
      s_pos = e_pos = 0  # [CLS]: no answer in this window
      if answer is not None and start <= answer[0] and answer[1] < start + length:
        s_pos, e_pos = first_ctx + answer[0] - start, first_ctx + answer[1] - start
      row["start_position"], row["end_position"] = np.int32(s_pos), np.int32(e_pos)
      rows.append(row)
      example_index.append(e)
      token_to_char.append(chars)
      max_context.append(best)
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return QaFeatures(arrays, np.asarray(example_index), token_to_char, max_context)


@dataclasses.dataclass
class QaPredictions:
  answers: dict[str, str]  # final predictions (with the null threshold applied)
  best_spans: dict[str, str]  # best non-null span per question
  null_diffs: dict[str, float]  # null score - best span score (SQuAD 2.0)
  nbest: dict[str, list[dict]]  # [{"text", "score", "probability"}] best first


def postprocess(examples: list[dict], features: QaFeatures, start_logits: np.ndarray,
                end_logits: np.ndarray, *, n_best_size: int = 20, max_answer_length: int = 30,
                version_2_with_negative: bool = False,
                null_score_diff_threshold: float = 0.0) -> QaPredictions:
  by_example: dict[int, list[int]] = {}
  for f, e in enumerate(features.example_index):
    by_example.setdefault(int(e), []).append(f)
  answers, best_spans, null_diffs, nbest = {}, {}, {}, {}
  for e, ex in enumerate(examples):
    candidates, null_score = [], np.inf
    for f in by_example.get(e, []):
      s_logits, e_logits = start_logits[f], end_logits[f]
      chars, best = features.token_to_char[f], features.max_context[f]
      null_score = min(null_score, float(s_logits[0] + e_logits[0]))
      starts = np.argsort(-s_logits, kind="stable")[:n_best_size]
      ends = np.argsort(-e_logits, kind="stable")[:n_best_size]
      for s in starts:
        if chars[s, 0] < 0 or not best[s]:
          continue
        for t in ends:
          if chars[t, 0] < 0 or t < s or t - s + 1 > max_answer_length:
            continue
          candidates.append((float(s_logits[s] + e_logits[t]), int(chars[s, 0]),
                             int(chars[t, 1])))
    candidates.sort(key=lambda c: -c[0])
    entries, seen = [], set()
    for score, a, b in candidates:
      text = ex["context"][a:b]
      if text in seen:
        continue
      seen.add(text)
      entries.append({"text": text, "score": score})
      if len(entries) >= n_best_size:
        break
    best_score = entries[0]["score"] if entries else -np.inf
    best_spans[ex["id"]] = entries[0]["text"] if entries else ""
    if version_2_with_negative:
      entries.append({"text": "", "score": null_score})
      entries.sort(key=lambda x: -x["score"])
      diff = null_score - best_score if entries else np.inf
      null_diffs[ex["id"]] = float(diff)
      answers[ex["id"]] = "" if diff > null_score_diff_threshold else best_spans[ex["id"]]
    else:
      answers[ex["id"]] = best_spans[ex["id"]]
    if entries:
      scores = np.array([x["score"] for x in entries])
      probs = np.exp(scores - scores.max())
      for x, p in zip(entries, probs / probs.sum()):
        x["probability"] = float(p)
    nbest[ex["id"]] = entries[:n_best_size]
  return QaPredictions(answers, best_spans, null_diffs, nbest)
