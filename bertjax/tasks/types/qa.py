"""``task: qa``: extractive question answering (SQuAD v1.1, and v2.0 with unanswerable
questions).

A start/end head over the tokens of question + context windows (``data.doc_stride``); the loss
is (CE(start) + CE(end)) / 2 as transformers' ``*ForQuestionAnswering``; answers come from the
n-best spans over all windows of a question (``tasks/qa.py``, run_squad.py's post-processing),
and for SQuAD 2.0 the null threshold can be tuned on dev. Dev metrics: SQuAD F1 and exact match.
"""

from __future__ import annotations

import jax.numpy as jnp

from bertjax.objectives.mlm import cross_entropy
from bertjax.tasks import metrics as M
from bertjax.tasks.data import SplitData
from bertjax.tasks.formats import qa_example, read_squad
from bertjax.tasks.qa import postprocess, qa_features
from bertjax.tasks.types.base import HeadTask


class QuestionAnswering(HeadTask):
  name = "qa"
  head = "qa"
  metrics = ("f1", "exact")
  label_key = None  # answers: an example may have none (SQuAD 2.0)
  has_label_set = False
  per_token = True
  file_readers = {"squad": read_squad}

  def num_labels(self, labels):
    return 2  # start, end

  def example(self, item, path, index, data):
    return qa_example(item, path, index)

  def split(self, name, examples, cfg, tokenizer, labels):
    d = cfg.data
    feats = qa_features(examples, tokenizer, max_length=d.max_seq_length,
                        doc_stride=d.doc_stride, max_query_length=d.max_query_length)
    return SplitData(name, examples, feats.arrays, qa=feats)

  def has_labels(self, split):
    return any(ex["answers"] for ex in split.examples)

  def evaluate(self, split, logits, cfg, labels, *, tune_threshold=False, threshold=None):
    """``tune_threshold`` (SQuAD 2.0 dev) picks the null threshold that maximises F1 and reports
    it as ``null_threshold``."""
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

  def loss_count(self, batch):
    return batch["start_position"].shape[0]

  def loss(self, logits, batch):
    start, end = batch["start_position"], batch["end_position"]
    return {"task_loss": 0.5 * (cross_entropy(logits[..., 0], start) +
                                cross_entropy(logits[..., 1], end)).sum(),
            "task_correct": ((jnp.argmax(logits[..., 0], -1) == start) &
                             (jnp.argmax(logits[..., 1], -1) == end)).sum(),
            "task_count": jnp.asarray(logits.shape[0])}


TYPE = QuestionAnswering()
