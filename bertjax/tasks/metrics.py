"""Fine-tuning metrics: accuracy, F1 (binary / macro / micro), Matthews correlation,
Pearson / Spearman, entity-level precision / recall / F1 over BIO tags with seqeval's default
(non-strict) chunking, and SQuAD's exact match / F1 with the official normalisation."""

from __future__ import annotations

import collections
import re
import string

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(gold))) if len(gold) else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f1_binary(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
  p, g = np.asarray(pred) == positive, np.asarray(gold) == positive
  return _f1(float(np.sum(p & g)), float(np.sum(p & ~g)), float(np.sum(~p & g)))


def f1_macro(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
  """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
  present = sorted(set(np.asarray(gold).tolist()) | set(np.asarray(pred).tolist()))
  present = [c for c in present if 0 <= c < num_classes] or [0]
  return float(np.mean([f1_binary(pred, gold, c) for c in present]))


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
  """Multi-class MCC (Gorodkin's R_K, as sklearn computes it); 0 when undefined."""
  pred, gold = np.asarray(pred), np.asarray(gold)
  classes = np.union1d(pred, gold)
  index = {c: i for i, c in enumerate(classes)}
  c = np.zeros((len(classes), len(classes)))
  for p, g in zip(pred, gold):
    c[index[g], index[p]] += 1
  t, p = c.sum(axis=1), c.sum(axis=0)
  n, correct = c.sum(), np.trace(c)
  denom = np.sqrt((n * n - p @ p) * (n * n - t @ t))
  return float((correct * n - t @ p) / denom) if denom else 0.0


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
  from scipy import stats

  return float(stats.pearsonr(pred, gold)[0]) if np.std(pred) and np.std(gold) else 0.0


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
  from scipy import stats

  return float(stats.spearmanr(pred, gold)[0]) if np.std(pred) and np.std(gold) else 0.0


def classification_metrics(logits: np.ndarray, gold: np.ndarray, labels: tuple[str, ...]) -> dict:
  """Single-label: accuracy, F1 (binary: the second label is positive; else macro), macro F1,
  MCC."""
  pred = np.argmax(logits, axis=-1)
  out = {"accuracy": accuracy(pred, gold), "f1_macro": f1_macro(pred, gold, len(labels)),
         "mcc": matthews_corrcoef(pred, gold)}
  out["f1"] = f1_binary(pred, gold, 1) if len(labels) == 2 else out["f1_macro"]
  return out


def multi_label_metrics(logits: np.ndarray, gold: np.ndarray) -> dict:
  """Sigmoid > 0.5: micro / macro F1 over labels and exact-set (subset) accuracy."""
  pred = logits > 0
  gold = gold > 0.5
  tp, fp, fn = (pred & gold).sum(0), (pred & ~gold).sum(0), (~pred & gold).sum(0)
  per_label = [_f1(a, b, c) for a, b, c in zip(tp, fp, fn)]
  return {"f1_micro": _f1(tp.sum(), fp.sum(), fn.sum()), "f1_macro": float(np.mean(per_label)),
          "accuracy": float(np.mean(np.all(pred == gold, axis=1)))}


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict:
  pred, gold = np.asarray(pred, np.float64).reshape(-1), np.asarray(gold, np.float64).reshape(-1)
  return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold),
          "mse": float(np.mean((pred - gold) ** 2))}


# -- entity-level F1 (seqeval semantics) -----------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
  if tag in ("O", ""):
    return "O", "_"
  return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  return (prev_tag in ("E", "S") or
          (prev_tag in ("B", "I") and tag in ("B", "S", "O")) or
          (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  return (tag in ("B", "S") or
          (prev_tag in ("E", "S", "O") and tag in ("E", "I")) or
          (tag not in ("O", ".") and prev_type != type_))


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) chunks of one tag sequence; like seqeval's default mode, an I- after
  O or after another type starts a new entity (IOB1-tolerant)."""
  chunks, prev_tag, prev_type, begin = [], "O", "", 0
  for i, tag in enumerate(list(tags) + ["O"]):
    t, type_ = _split_tag(tag)
    if _end_of_chunk(prev_tag, t, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _start_of_chunk(prev_tag, t, prev_type, type_):
      begin = i
    prev_tag, prev_type = t, type_
  return chunks


def entity_metrics(pred: list[list[str]], gold: list[list[str]]) -> dict:
  """Micro entity precision / recall / F1 over sentences, plus token accuracy."""
  tp = n_pred = n_gold = 0
  correct_tokens = total_tokens = 0
  for p, g in zip(pred, gold):
    pe = {(t, b, e) for t, b, e in get_entities(p)}
    ge = {(t, b, e) for t, b, e in get_entities(g)}
    tp += len(pe & ge)
    n_pred += len(pe)
    n_gold += len(ge)
    correct_tokens += sum(a == b for a, b in zip(p, g))
    total_tokens += len(g)
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_gold if n_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1,
          "accuracy": correct_tokens / total_tokens if total_tokens else 0.0}


# -- SQuAD (official evaluate-v1.1.py / evaluate-v2.0.py) -----------------------------------


def normalize_answer(s: str) -> str:
  """Lower text and remove punctuation, articles and extra whitespace."""
  s = s.lower()
  exclude = set(string.punctuation)
  s = "".join(ch for ch in s if ch not in exclude)
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match(prediction: str, truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(truth))


def span_f1(prediction: str, truth: str) -> float:
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(truth).split()
  if not pred_tokens or not gold_tokens:  # v2: no-answer matches only no-answer
    return float(pred_tokens == gold_tokens)
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: list[dict]) -> tuple[dict, dict]:
  """Per-question (exact, f1), max over the gold answers; an unanswerable question's only gold
  answer is "" (evaluate-v2.0.py)."""
  exact, f1 = {}, {}
  for ex in examples:
    golds = [a["text"] for a in ex["answers"] if normalize_answer(a["text"])] or [""]
    pred = predictions.get(ex["id"], "")
    exact[ex["id"]] = max(exact_match(pred, g) for g in golds)
    f1[ex["id"]] = max(span_f1(pred, g) for g in golds)
  return exact, f1


def squad_metrics(predictions: dict[str, str], examples: list[dict]) -> dict:
  """exact / f1 in percent, and for v2 data the HasAns / NoAns breakdown."""
  exact, f1 = squad_scores(predictions, examples)
  n = max(len(examples), 1)
  out = {"exact": 100.0 * sum(exact.values()) / n, "f1": 100.0 * sum(f1.values()) / n}
  has = [ex["id"] for ex in examples if not ex.get("is_impossible")]
  no = [ex["id"] for ex in examples if ex.get("is_impossible")]
  if no:
    for name, ids in (("has_ans", has), ("no_ans", no)):
      if ids:
        out[f"{name}_exact"] = 100.0 * sum(exact[i] for i in ids) / len(ids)
        out[f"{name}_f1"] = 100.0 * sum(f1[i] for i in ids) / len(ids)
  return out


def best_null_threshold(examples: list[dict], best_spans: dict[str, str],
                        null_diffs: dict[str, float]) -> tuple[float, float]:
  """evaluate-v2.0.py ``find_best_thresh`` for F1: sweep the threshold over the observed
  (null score - best span score) differences; -> (best F1 in percent, threshold)."""
  _, f1 = squad_scores(best_spans, examples)
  no_answer = {ex["id"]: not any(normalize_answer(a["text"]) for a in ex["answers"])
               for ex in examples}
  score = cur = float(sum(no_answer.values()))  # everything predicted "no answer"
  best_thresh = max(null_diffs.values(), default=0.0) + 1.0
  for qid in sorted(null_diffs, key=lambda k: null_diffs[k]):
    # below this question's diff the span is predicted instead of ""
    cur += f1[qid] - (1.0 if no_answer[qid] else 0.0)
    if cur > score:
      score, best_thresh = cur, null_diffs[qid]
  return 100.0 * score / max(len(examples), 1), best_thresh
