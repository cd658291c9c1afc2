"""``task: token_classification``: a tag per word (NER, POS), from CoNLL files or token/tag
lists.

A token classifier head; the first subword of each word carries its tag and the rest are
ignored (-100), as BERT's NER recipe and transformers' run_ner; predictions are read back at
first subwords. Dev metrics: micro entity F1, precision and recall (seqeval's default mode)
and the accuracy of the words' tags.
"""

from __future__ import annotations

from bertjax.tasks import metrics as M
from bertjax.tasks.data import MODEL_INPUTS, SplitData
from bertjax.tasks.features import token_features, word_predictions
from bertjax.tasks.formats import read_conll, token_example
from bertjax.tasks.types.base import HeadTask
from bertjax.tasks.types.classification import label_cross_entropy


class TokenClassification(HeadTask):
  name = "token_classification"
  head = "token_classifier"
  metrics = ("f1", "precision", "recall", "accuracy")
  label_key = "tags"
  per_token = True
  file_readers = {"conll": read_conll}

  @property
  def per_token_keys(self):
    return MODEL_INPUTS + ("label",)

  def labels_of(self, example):
    return example["tags"] or []

  def example(self, item, path, index, data):
    return token_example(item, path, data)

  def split(self, name, examples, cfg, tokenizer, labels):
    arrays, starts = token_features(examples, tokenizer, labels, cfg.data.max_seq_length)
    return SplitData(name, examples, arrays, word_starts=starts)

  def evaluate(self, split, logits, cfg, labels, *, tune_threshold=False, threshold=None):
    tags = word_predictions(logits, split.word_starts, labels)
    preds = [{"tokens": ex["tokens"], "tags": t} for ex, t in zip(split.examples, tags)]
    gold = [ex["tags"] for ex in split.examples]
    return (M.entity_metrics(tags, gold) if all(g is not None for g in gold) else {}), preds

  def loss_count(self, batch):
    return (batch["label"] >= 0).sum()

  def loss(self, logits, batch):
    return label_cross_entropy(logits, batch["label"])


TYPE = TokenClassification()
