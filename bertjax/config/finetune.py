"""The fine-tuning schema: ``bertjax finetune TASK_YAML [key=value ...]``.

A task YAML names the task type, the data files and fields, and the starting checkpoint (a
bertjax model or run folder, or a Hugging Face transformers folder imported on the fly).
Presets live in ``configs/tasks/``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from bertjax.config.schema import (CheckpointConfig, MeshConfig, OptimConfig, check_cadences,
                                   check_microbatches)
from bertjax.errors import ConfigError

@dataclasses.dataclass(frozen=True)
class TaskDataConfig:
  """Labeled data. ``format=auto`` reads the file suffix: .jsonl, .csv, .tsv, .conll/.txt
  (token<TAB>tag), .json (SQuAD). ``glue`` is a headed TSV read without quote handling (GLUE's
  files contain bare quotes); with ``header: false`` fields are column numbers ("0", "3")."""

  format: Literal["auto", "jsonl", "csv", "tsv", "glue", "conll", "squad", "tfds"] = "auto"
  # A labeled set shipped with bertjax (rt-polarity, wnut16-ner): its splits are the defaults
  # of train / validation / test below, and a path there overrides one.
  dataset: str = ""
  train: str = ""  # a file; for format=tfds the split name
  validation: str = ""
  test: str = ""
  tfds_name: str = ""  # format=tfds: dataset name (array_record data_source, no TensorFlow)
  tfds_data_dir: str | None = None
  text_field: str = "text"
  text_pair_field: str | None = None  # sentence pairs (NLI, paraphrase, STS)
  label_field: str = "label"
  tokens_field: str = "tokens"  # token classification from JSONL / TFDS
  tags_field: str = "tags"
  header: bool = True
  # The label set in class-id order; () = the sorted labels of the train split. An eval label
  # outside the set is an error.
  labels: tuple[str, ...] = ()
  label_separator: str = ","  # multi_label labels given as one string in CSV/TSV
  tokenizer: str | None = None  # default: the tokenizer of the starting checkpoint
  max_seq_length: int = 128
  # Length buckets: a batch is padded to the smallest of these lengths that holds its longest
  # row (one compile per bucket). () = bucket_count lengths from the train split's length
  # quantiles; [max_seq_length] = one length, no bucketing. max_seq_length is always a bucket.
  buckets: tuple[int, ...] = ()
  bucket_count: int = 4
  # Training batches gather rows of similar length (windows of 64 batches sorted by length, the
  # batches' order shuffled), so short batches fill short buckets; false = plain shuffling.
  group_by_length: bool = True
  # Extractive QA (google-research/bert run_squad.py defaults)
  doc_stride: int = 128
  max_query_length: int = 64

  def __post_init__(self):
    if self.max_seq_length < 8:
      raise ConfigError(f"data.max_seq_length must be >= 8, got {self.max_seq_length}")
    if self.doc_stride < 1 or self.max_query_length < 1:
      raise ConfigError("data.doc_stride and data.max_query_length must be >= 1")
    if any(not 1 <= b <= self.max_seq_length for b in self.buckets):
      raise ConfigError(f"data.buckets={list(self.buckets)}: each must be in [1, "
                        f"data.max_seq_length={self.max_seq_length}]")
    if self.bucket_count < 1:
      raise ConfigError(f"data.bucket_count must be >= 1, got {self.bucket_count}")


@dataclasses.dataclass(frozen=True)
class QaConfig:
  version_2_with_negative: bool = False  # SQuAD 2.0: unanswerable questions
  n_best_size: int = 20
  max_answer_length: int = 30
  # Predict "no answer" when null score - best span score > threshold (SQuAD 2.0).
  null_score_diff_threshold: float = 0.0
  tune_null_threshold: bool = True  # choose the threshold that maximises dev F1


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """``task: sentence_embedding``: contrastive training with in-batch negatives
  (objectives/contrastive.py; sentence-transformers' MultipleNegativesRankingLoss)."""
  pooling: Literal["mean", "cls"] = "mean"
  normalize: bool = True  # unit-length vectors out of `embed` and the exported model
  scale: float = 20.0  # cosine similarity x scale (= 1 / temperature)
  symmetric: bool = False  # + each positive against every anchor (MNSymmetricRankingLoss)
  # GradCache: embed the batch in chunks of this many rows, recomputing each chunk's activations
  # in the backward pass; the loss still uses every negative of the batch (0 = off)
  chunk: int = 0
  anchor_field: str = "anchor"
  positive_field: str = "positive"
  negative_field: str = "negative"  # optional: a hard negative per row when the field is there

  def __post_init__(self):
    if self.scale <= 0 or self.chunk < 0:
      raise ConfigError("embedding.scale must be positive and embedding.chunk >= 0")


@dataclasses.dataclass(frozen=True)
class FinetuneTrainConfig:
  epochs: float = 3.0
  batch_size: int = 32
  eval_batch_size: int = 64
  grad_accum_steps: int = 1
  seeds: tuple[int, ...] = (0,)  # one run per seed; the summary reports the median
  eval_every: int = 0  # steps between dev evaluations; 0 = every epoch
  metric: str | None = None  # dev metric for the best checkpoint; None = the task's main metric
  early_stopping_patience: int | None = None  # evaluations without improvement; null = off
  log_every: int = 50
  on_nonfinite: Literal["stop", "skip"] = "stop"  # as in pretraining (TrainConfig)
  max_consecutive_skips: int = 10

  def __post_init__(self):
    if self.epochs <= 0 or self.batch_size < 1 or self.eval_batch_size < 1:
      raise ConfigError("train.epochs, train.batch_size and train.eval_batch_size must be positive")
    if not self.seeds:
      raise ConfigError("train.seeds must name at least one seed")
    check_microbatches(self.batch_size, self.grad_accum_steps)
    check_cadences(self)

  @property
  def max_skips(self) -> int:
    return 0 if self.on_nonfinite == "stop" else self.max_consecutive_skips


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  name: str = "finetune"
  run_dir: str = "runs/finetune"
  # a task type of bertjax.tasks.types (classification, token_classification, qa, ...); the
  # registry checks it, and train.metric against it, before a run reads anything
  task: str = "classification"
  init_from: str = ""  # bertjax model/run folder or a transformers folder
  # key=value changes to the starting model's config (dropout, classifier_pooling, ...)
  model_overrides: tuple[str, ...] = ()
  data: TaskDataConfig = TaskDataConfig()
  optim: OptimConfig = OptimConfig(learning_rate=2e-5, warmup_steps=0, warmup_fraction=0.1,
                                   weight_decay=0.01, eps=1e-8)
  train: FinetuneTrainConfig = FinetuneTrainConfig()
  qa: QaConfig = QaConfig()
  embedding: EmbeddingConfig = EmbeddingConfig()
  checkpoint: CheckpointConfig = CheckpointConfig(every=0, keep=1)
  mesh: MeshConfig = MeshConfig()

  def __post_init__(self):
    if not self.init_from:
      raise ConfigError("init_from is required: a bertjax model folder or a transformers folder")
