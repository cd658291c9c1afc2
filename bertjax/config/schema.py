"""The schema of a pretraining experiment: typed, frozen dataclasses (the model's is
``model.py``, fine-tuning's ``finetune.py``).

Values are checked in ``__post_init__``; every error a user can hit is a one-line
``ConfigError`` naming the field. Loading (YAML, presets, overrides) is ``loader.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from bertjax.config.model import ModelConfig
from bertjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape; -1 on one axis takes the remaining devices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  # Multislice: the data axis spans this many slices (DCN); fsdp and tensor stay inside one
  # slice (ICI). Slices are the devices' slice_index (TPU) or, where devices have none, the
  # processes (multi-process CPU/GPU).
  slices: int = 1
  # Logical-axis -> mesh-axis rules; None entries replicate. Data, not code (MaxText style).
  rules: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where text comes from, how instances are built and how tokens are masked."""

  # "corpus" = the corpus shipped in the package; a .txt file or folder (one paragraph per line,
  # blank line between documents); a .jsonl file; "tfds:NAME" (array_record data_source); or an
  # ArrayRecord folder written by `bertjax prepare-data`.
  source: str = "corpus"
  text_field: str = "text"  # JSONL / TFDS feature holding the text
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  tokenizer: str = "corpus"  # a tokenizer folder; "corpus" = the WordPiece vocab shipped with it
  max_seq_length: int = 128
  # Instances (google-research/bert create_pretraining_data.py semantics).
  # nsp / sop: sentence pairs; full_sentences: RoBERTa blocks crossing documents;
  # doc_sentences: blocks within one document (SpanBERT); packed: documents with segment ids
  instances: Literal["nsp", "sop", "full_sentences", "doc_sentences", "packed"] = "nsp"
  short_seq_prob: float = 0.1
  # ALBERT SOP: a single-chunk document gets a random-document B labelled 1 ("random", as the
  # original create_pretraining_data.py does -- an NSP leftover) or is skipped ("drop").
  sop_single_chunk: Literal["random", "drop"] = "random"
  # Masking: rate of selected tokens; of those, mask_token_prob -> [MASK], random_token_prob ->
  # a random id, the rest unchanged (BERT 0.15 / 0.8 / 0.1).
  mask_rate: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  max_predictions_per_seq: int = 20
  whole_word_masking: bool = False
  # token: BERT (per token, optionally whole words); ngram: ALBERT (whole-word n-grams, n <= 3
  # with p(n) ~ 1/n); span: SpanBERT (geometric whole-word spans, one decision per span + SBO)
  masking: Literal["token", "ngram", "span"] = "token"
  ngram_max: int = 3
  span_geometric_p: float = 0.2
  span_max_words: int = 10
  dynamic_masking: bool = True  # new masks each epoch; False = one static mask per instance
  eval_fraction: float = 0.02  # documents held out for evaluation
  num_workers: int = 0  # grain worker processes (0 = in-process with threads)
  seed: int = 12345

  def __post_init__(self):
    if self.max_seq_length < 8:
      raise ConfigError(f"data.max_seq_length must be >= 8, got {self.max_seq_length}")
    for name in ("short_seq_prob", "mask_rate", "mask_token_prob", "random_token_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
    if self.mask_token_prob + self.random_token_prob > 1.0:
      raise ConfigError("data.mask_token_prob + data.random_token_prob must be <= 1")
    if self.max_predictions_per_seq < 1:
      raise ConfigError("data.max_predictions_per_seq must be >= 1")
    if not 0.0 < self.eval_fraction < 0.5:  # pretraining always evaluates on held-out text
      raise ConfigError(f"data.eval_fraction must be in (0, 0.5), got {self.eval_fraction}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with the BERT recipe by default: decay off for biases and norms, linear warmup+decay."""

  name: Literal["adamw", "lamb", "stable_adamw"] = "adamw"
  learning_rate: float = 1e-4
  warmup_steps: int = 10000
  # linear: warmup then linear decay to 0; wsd: warmup, stable, then decay over decay_steps
  schedule: Literal["linear", "constant", "wsd"] = "linear"
  decay_steps: int = 0
  final_lr_fraction: float = 0.0
  decay_shape: Literal["linear", "one_minus_sqrt"] = "one_minus_sqrt"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  weight_decay: float = 0.01
  clip_norm: float | None = 1.0  # global gradient-norm clipping; null = off
  # Warmup as a fraction of all steps (fine-tuning's usual 0.1); overrides warmup_steps.
  warmup_fraction: float | None = None
  # Layer-wise learning-rate decay (ELECTRA fine-tuning): layer l of L gets lr * decay^(L - l),
  # the embeddings lr * decay^L, heads and final norm the full lr. null = off.
  layer_decay: float | None = None

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ConfigError(f"optim.learning_rate must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ConfigError("optim.warmup_steps must be >= 0")
    if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
      raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
    if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
      raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 32  # global, across all processes
  grad_accum_steps: int = 1  # microbatches per step (gradients normalised by loss tokens)
  eval_every: int = 500
  eval_batches: int = 20
  log_every: int = 50
  seed: int = 0
  # Start from the parameters of another run or model folder (a new optimizer and schedule):
  # ModernBERT's context extension, EuroBERT's annealing, continued pretraining.
  init_from: str | None = None
  # Peak FLOP/s per device for MFU; null = measure an f32 matmul on CPU / table on TPU.
  peak_flops_per_device: float | None = None
  # A step whose loss or gradients are not finite never changes the parameters. stop: the run
  # ends with an error naming the step (its checkpoints stay as they were); skip: training
  # goes on, and stops once max_consecutive_skips steps in a row were not finite.
  on_nonfinite: Literal["stop", "skip"] = "stop"
  max_consecutive_skips: int = 10

  def __post_init__(self):
    if self.steps < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
      raise ConfigError("train.steps, train.batch_size and train.grad_accum_steps must be >= 1")
    check_microbatches(self.batch_size, self.grad_accum_steps)
    check_cadences(self)

  @property
  def max_skips(self) -> int:
    """Non-finite steps tolerated in a row before the run stops."""
    return 0 if self.on_nonfinite == "stop" else self.max_consecutive_skips


def check_cadences(train) -> None:
  """Logging and evaluation cadences of a train section."""
  for name in ("log_every", "eval_every", "max_consecutive_skips"):
    value = getattr(train, name)
    if value < (1 if name == "log_every" else 0):
      raise ConfigError(f"train.{name} must be >= {1 if name == 'log_every' else 0}, got {value}")


def check_microbatches(batch_size: int, grad_accum_steps: int) -> None:
  """train.batch_size must split into train.grad_accum_steps equal microbatches."""
  if grad_accum_steps < 1:
    raise ConfigError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
  if batch_size % grad_accum_steps:
    raise ConfigError(f"train.batch_size={batch_size} is not divisible by "
                      f"train.grad_accum_steps={grad_accum_steps}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 500  # save every N steps (and at the end, and on SIGTERM)
  keep: int = 3  # keep the newest N
  keep_every: int | None = None  # additionally keep every K-th step forever
  async_save: bool = True

  def __post_init__(self):
    if self.every < 0 or self.keep < 1 or (self.keep_every is not None and self.keep_every < 1):
      raise ConfigError(f"checkpoint.every must be >= 0, checkpoint.keep >= 1 and "
                        f"checkpoint.keep_every >= 1 or null; got {self.every}, {self.keep}, "
                        f"{self.keep_every}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """DistilBERT (transformers examples/research_projects/distillation, the published command)."""

  teacher: str = ""  # a bertjax model folder with an MLM head (e.g. from `bertjax import-hf`)
  layers: tuple[int, ...] = (0, 2, 4, 7, 9, 11)  # teacher layers copied into the student
  temperature: float = 2.0
  alpha_ce: float = 5.0  # soft cross-entropy (KL) to the teacher at temperature T, x T^2
  alpha_mlm: float = 2.0  # hard MLM loss on the masked positions
  alpha_cos: float = 1.0  # 1 - cos(student, teacher) on last hidden states


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One pretraining run: ``bertjax pretrain [PRESET_OR_YAML] [key=value ...]``."""

  name: str = "bert-demo"
  run_dir: str = "runs/bert-demo"
  objective: Literal["mlm", "electra", "distill"] = "mlm"  # mlm: MLM + NSP/SOP/SBO heads if any
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  mesh: MeshConfig = MeshConfig()
  distill: DistillConfig = DistillConfig()
