"""A task's splits as model-ready arrays, and logits -> predictions -> metrics.

Data flows one way: files -> examples (formats.py) -> arrays (features.py / qa.py) -> logits
(the model) -> predictions and metrics (here and metrics.py).
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from bertjax.config import FinetuneConfig
from bertjax.data.buckets import LengthGroupedSampler, choose_buckets
from bertjax.data.tokenizer import Tokenizer
from bertjax.tasks import metrics as M
from bertjax.tasks.features import sequence_features, token_features, word_predictions
from bertjax.tasks.formats import TaskDataError, check_labels, read_split
from bertjax.tasks.qa import QaFeatures, postprocess, qa_features

MODEL_INPUTS = ("input_ids", "token_type_ids", "padding_mask")


def per_token_keys(task: str) -> tuple[str, ...]:
  """The arrays with a length axis (cut to a batch's bucket); the rest are per row."""
  return MODEL_INPUTS + (("label",) if task == "token_classification" else ())


def per_token_logits(task: str) -> bool:
  """Whether the task head scores every token (NER tags, QA start/end) rather than the row."""
  return task in ("token_classification", "qa")


def task_buckets(cfg: FinetuneConfig, train_lengths: np.ndarray) -> tuple[int, ...]:
  """``data.buckets`` (with max_seq_length), or ``data.bucket_count`` from the train lengths."""
  d = cfg.data
  if d.buckets:
    return tuple(sorted(set(d.buckets) | {d.max_seq_length}))
  return choose_buckets(train_lengths, d.max_seq_length, d.bucket_count)


@dataclasses.dataclass
class SplitData:
  name: str
  examples: list[dict]
  arrays: dict[str, np.ndarray]  # model inputs + targets, one row per feature
  word_starts: list[np.ndarray] | None = None  # token classification
  qa: QaFeatures | None = None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  @property
  def lengths(self) -> np.ndarray:
    return self.arrays["padding_mask"].sum(1)


def encode(examples: list[dict], name: str, cfg: FinetuneConfig, tokenizer: Tokenizer,
           labels: tuple[str, ...]) -> SplitData:
  d, task = cfg.data, cfg.task
  if not examples:
    raise TaskDataError(f"data.{name}: no examples in {getattr(cfg.data, name)}")
  if task == "qa":
    feats = qa_features(examples, tokenizer, max_length=d.max_seq_length,
                        doc_stride=d.doc_stride, max_query_length=d.max_query_length)
    return SplitData(name, examples, feats.arrays, qa=feats)
  if task == "token_classification":
    arrays, starts = token_features(examples, tokenizer, labels, d.max_seq_length)
    return SplitData(name, examples, arrays, word_starts=starts)
  return SplitData(name, examples, sequence_features(examples, tokenizer, task, labels,
                                                     d.max_seq_length))


def load_split(name: str, cfg: FinetuneConfig, tokenizer: Tokenizer,
               labels: tuple[str, ...]) -> SplitData:
  examples = read_split(name, cfg.task, cfg.data)
  check_labels(examples, cfg.task, labels, name)
  return encode(examples, name, cfg, tokenizer, labels)


def has_labels(split: SplitData, task: str) -> bool:
  """Whether the split can be scored: every example labelled (QA: some answers given)."""
  if task == "qa":
    return any(ex["answers"] for ex in split.examples)
  key = "tags" if task == "token_classification" else "label"
  return all(ex[key] is not None for ex in split.examples)


def evaluate_logits(split: SplitData, logits: np.ndarray, cfg: FinetuneConfig,
                    labels: tuple[str, ...], *, tune_threshold: bool = False,
                    threshold: float | None = None) -> tuple[dict, list[dict]]:
  """-> (metrics, one prediction dict per example). ``tune_threshold`` (SQuAD 2.0 dev) picks
  the null threshold that maximises F1 and reports it as ``null_threshold``."""
  task = cfg.task
  if task == "qa":
    qa = cfg.qa
    thresh = qa.null_score_diff_threshold if threshold is None else threshold
    result = postprocess(split.examples, split.qa, logits[..., 0], logits[..., 1],
                         n_best_size=qa.n_best_size, max_answer_length=qa.max_answer_length,
                         version_2_with_negative=qa.version_2_with_negative,
                         null_score_diff_threshold=thresh)
    metrics = {}
    if qa.version_2_with_negative and tune_threshold:
      _, thresh = M.best_null_threshold(split.examples, result.best_spans, result.null_diffs)
      result.answers = {k: "" if result.null_diffs[k] > thresh else result.best_spans[k]
                        for k in result.answers}
    if qa.version_2_with_negative:
      metrics["null_threshold"] = float(thresh)
    metrics.update(M.squad_metrics(result.answers, split.examples))
    preds = [{"id": ex["id"], "answer": result.answers[ex["id"]],
              "nbest": result.nbest[ex["id"]][:5]} for ex in split.examples]
    return metrics, preds
  if task == "token_classification":
    tags = word_predictions(logits, split.word_starts, labels)
    preds = [{"tokens": ex["tokens"], "tags": t} for ex, t in zip(split.examples, tags)]
    gold = [ex["tags"] for ex in split.examples]
    return (M.entity_metrics(tags, gold) if all(g is not None for g in gold) else {}), preds
  gold = split.arrays["label"]
  if task == "regression":
    scores = logits[..., 0]
    preds = [{"text": ex["text"], "score": float(s)} for ex, s in zip(split.examples, scores)]
    return (M.regression_metrics(scores, gold) if not np.isnan(gold).any() else {}), preds
  if task == "multi_label":
    probs = 1.0 / (1.0 + np.exp(-logits))
    preds = [{"text": ex["text"], "labels": [labels[j] for j in np.flatnonzero(p > 0.5)],
              "probabilities": dict(zip(labels, map(float, p)))}
             for ex, p in zip(split.examples, probs)]
    labelled = all(ex["label"] is not None for ex in split.examples)  # [] is a label set
    return (M.multi_label_metrics(logits, gold) if labelled else {}), preds
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  preds = [{"text": ex["text"], "label": labels[int(np.argmax(p))],
            "probabilities": dict(zip(labels, map(float, p)))}
           for ex, p in zip(split.examples, probs)]
  labelled = gold >= 0
  metrics = (M.classification_metrics(logits[labelled], gold[labelled], labels)
             if labelled.all() else {})
  return metrics, preds


class _TaskDataset:
  """(epoch, index, bucket) -> one training row, its per-token arrays cut to the bucket;
  picklable for grain."""

  def __init__(self, arrays: dict[str, np.ndarray], per_token: tuple[str, ...]):
    self.arrays, self.per_token = arrays, per_token

  def __call__(self, item):
    _, index, bucket = item
    return {k: v[index, :bucket] if k in self.per_token else v[index]
            for k, v in self.arrays.items()}


def train_iterator(arrays: dict[str, np.ndarray], batch_size: int, seed: int, *,
                   buckets: tuple[int, ...], per_token: tuple[str, ...], group: bool = True):
  """Epoch-shuffled batches of this process's rows, rows of similar length together and each
  batch padded to its bucket (grain; the state goes into checkpoints)."""
  local = batch_size // jax.process_count()
  lengths = arrays["padding_mask"].sum(1)
  sampler = LengthGroupedSampler(lengths, seed, buckets, group=group, local_batch=local,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  ds = grain.MapDataset.source(sampler).map(_TaskDataset(arrays, per_token)).batch(
      local, drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
