"""The schema: typed, frozen dataclasses for a model and a pretraining experiment.

Values are checked in ``__post_init__``; every error a user can hit is a one-line
``ConfigError`` naming the field. Loading (YAML, presets, overrides) is ``loader.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from bertjax.errors import UserError


class ConfigError(UserError):
  """A bad config key or value; the message is one line and names the field."""


Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
PRETRAINING_HEADS = ("mlm", "nsp", "sop", "rtd", "sbo")
TASK_HEADS = ("classifier", "token_classifier", "qa")  # fine-tuning: at most one per model


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one encoder and its pretraining heads. Names follow the papers, not HF."""

  family: str = "bert"
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int | None = None  # grouped-query attention; None -> num_heads
  head_dim: int | None = None  # None -> hidden_size // num_heads
  intermediate_size: int = 3072
  embedding_size: int | None = None  # factorized embeddings (ALBERT, ELECTRA-small); None -> hidden
  hidden_act: Activation = "gelu"
  head_act: Activation | None = None  # MLM-head transform activation; None -> hidden_act
  mlp_type: Literal["dense", "glu"] = "dense"
  max_position_embeddings: int = 512
  position_embedding: Literal["absolute", "rope", "none"] = "absolute"
  # RoBERTa: positions start at padding_idx + 1 and padding tokens sit at padding_idx.
  position_offset: int = 0
  type_vocab_size: int = 2  # 0 -> no token-type embeddings (DistilBERT)
  pad_token_id: int = 0
  norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
  norm_eps: float = 1e-12
  norm_bias: bool = True
  norm_position: Literal["post", "pre"] = "post"
  embedding_norm: bool = True
  use_bias: bool = True
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1  # on the attention probabilities
  # Where the other dropouts act. BERT drops the embeddings and each sublayer's output (after
  # the attention out-projection and after the MLP) at hidden_dropout. ModernBERT drops the
  # embeddings at its embedding_dropout, the attention output at its attention_dropout and the
  # MLP inside, before its output projection; DistilBERT has no attention-output dropout.
  embedding_dropout: float | None = None  # None -> hidden_dropout
  attention_output_dropout: float | None = None  # None -> hidden_dropout
  mlp_dropout_inside: bool = False  # drop act(x W_i) [* gate] before W_o, not after it
  # ALBERT cross-layer sharing: layer l runs group int(l * groups / num_layers); 0 = no sharing.
  num_hidden_groups: int = 0
  inner_group_num: int = 1
  pooler: bool = True
  # Subset of PRETRAINING_HEADS (mlm, nsp, sop, rtd, sbo) plus at most one of TASK_HEADS
  # (classifier, token_classifier, qa).
  heads: tuple[str, ...] = ("mlm", "nsp")
  sbo_max_targets: int = 15  # SpanBERT span-boundary head: positions within a span
  sbo_position_size: int = 200
  tie_word_embeddings: bool = True
  initializer_range: float = 0.02
  # ELECTRA joint generator (0 = none): width and depth as fractions of the discriminator's
  # (the original's generator_hidden_size / generator_layers).
  generator_width_fraction: float = 0.0
  generator_depth_fraction: float = 1.0
  # Rotary positions (position_embedding=rope): theta, and a separate theta for local layers.
  rope_theta: float = 10000.0
  local_rope_theta: float | None = None
  # Alternating attention (ModernBERT): local layers see |i - j| <= local_window; layer i is
  # global when i % global_every == 0 (so layer 0 is global). None = every layer global.
  local_window: int | None = None
  global_every: int = 1
  first_layer_attention_norm: bool = True  # ModernBERT: layer 0 has no attention norm
  mlm_transform: bool = True  # dense -> act -> norm before the decoder (EuroBERT: none)
  decoder_bias: bool = True
  # Fine-tuning heads, named after transformers' task models. The sequence classifier reads the
  # pooler (BERT, ALBERT), the first token (RoBERTa, ELECTRA, DistilBERT, ModernBERT), the
  # masked mean, or averages per-token logits ("late", EuroBERT). "sequence" adds a
  # dense -> act [-> norm] transform before the sequence classifier; "all" before every task
  # head (ModernBERT's shared prediction head).
  num_labels: int = 2
  labels: tuple[str, ...] = ()  # label names, index = class id (HF id2label); () -> LABEL_i
  problem_type: Literal["single_label", "multi_label", "regression"] = "single_label"
  classifier_pooling: Literal["pooler", "cls", "mean", "late"] = "pooler"
  classifier_transform: Literal["none", "sequence", "all"] = "none"
  classifier_act: Literal["gelu", "gelu_tanh", "relu", "silu", "tanh"] = "tanh"
  classifier_norm: bool = False
  classifier_bias: bool = True
  classifier_dropout: float | None = None  # None -> hidden_dropout
  attention_impl: Literal["auto", "einsum", "xla", "local", "splash"] = "auto"
  dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
  param_dtype: Literal["float32", "bfloat16"] = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ConfigError(
          f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
          f"{self.num_heads}; change one or set model.head_dim")
    if self.num_heads % self.kv_heads:
      raise ConfigError(
          f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads={self.kv_heads}")
    if self.num_hidden_groups < 0 or self.num_hidden_groups > self.num_layers:
      raise ConfigError(
          f"model.num_hidden_groups={self.num_hidden_groups} must be in [0, num_layers={self.num_layers}]")
    if self.inner_group_num < 1:
      raise ConfigError(f"model.inner_group_num must be >= 1, got {self.inner_group_num}")
    bad = set(self.heads) - set(PRETRAINING_HEADS) - set(TASK_HEADS)
    if bad:
      raise ConfigError(f"model.heads has unknown head(s) {sorted(bad)}; use "
                        f"{', '.join(PRETRAINING_HEADS + TASK_HEADS)}")
    if len(set(self.heads) & set(TASK_HEADS)) > 1:
      raise ConfigError(f"model.heads may hold one task head, got {list(self.heads)}")
    if self.task_head and self.num_labels < 1:
      raise ConfigError(f"model.num_labels must be >= 1, got {self.num_labels}")
    if self.labels and len(self.labels) != self.num_labels:
      raise ConfigError(f"model.labels has {len(self.labels)} names but model.num_labels="
                        f"{self.num_labels}")
    if self.task_head == "classifier" and self.classifier_pooling == "pooler" and not self.pooler:
      raise ConfigError("model.classifier_pooling=pooler needs model.pooler=true")
    if self.task_head == "qa" and self.num_labels != 2:
      raise ConfigError("model.heads=[qa] needs model.num_labels=2 (start and end logits)")
    if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
      raise ConfigError(f"model.classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
    if {"nsp", "sop"} <= set(self.heads):
      raise ConfigError("model.heads may hold nsp or sop, not both (they are the same 2-way head)")
    if ({"nsp", "sop"} & set(self.heads)) and not self.pooler:
      raise ConfigError("model.heads nsp/sop need model.pooler=true")
    for name in ("hidden_dropout", "attention_dropout", "embedding_dropout",
                 "attention_output_dropout"):
      value = getattr(self, name)
      if value is not None and not 0.0 <= value < 1.0:
        raise ConfigError(f"model.{name} must be in [0, 1), got {value}")
    if self.position_embedding == "absolute" and self.position_offset >= self.max_position_embeddings:
      raise ConfigError("model.position_offset must be smaller than model.max_position_embeddings")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise ConfigError(f"model.pad_token_id={self.pad_token_id} is outside the vocabulary "
                        f"(model.vocab_size={self.vocab_size})")
    if self.position_embedding == "rope" and self.dim_per_head % 2:
      raise ConfigError(f"model.position_embedding=rope needs an even head dimension, got "
                        f"{self.dim_per_head}")
    if self.local_window is not None and self.local_window < 1:
      raise ConfigError(f"model.local_window must be >= 1, got {self.local_window}")
    if self.global_every < 1:
      raise ConfigError(f"model.global_every must be >= 1, got {self.global_every}")
    if not 0.0 <= self.generator_width_fraction <= 1.0:
      raise ConfigError(f"model.generator_width_fraction must be in [0, 1], got "
                        f"{self.generator_width_fraction}")

  @property
  def task_head(self) -> str | None:
    """The fine-tuning head this model carries, if any."""
    return next((h for h in self.heads if h in TASK_HEADS), None)

  @property
  def label_names(self) -> tuple[str, ...]:
    return self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def embed_size(self) -> int:
    return self.embedding_size or self.hidden_size

  def is_local_layer(self, layer: int) -> bool:
    return self.local_window is not None and layer % self.global_every != 0

  def layer_theta(self, layer: int) -> float:
    if self.is_local_layer(layer) and self.local_rope_theta is not None:
      return self.local_rope_theta
    return self.rope_theta

  @property
  def num_blocks(self) -> int:
    """Distinct parameter blocks: num_layers, or groups x inner layers when ALBERT-shared."""
    if self.num_hidden_groups:
      return self.num_hidden_groups * self.inner_group_num
    return self.num_layers

  def block_schedule(self) -> list[int]:
    """Which parameter block each of the applied layers uses, in order (ALBERT sharing)."""
    if not self.num_hidden_groups:
      return list(range(self.num_layers))
    order = []
    for layer in range(self.num_layers):
      group = int(layer / (self.num_layers / self.num_hidden_groups))
      order.extend(group * self.inner_group_num + k for k in range(self.inner_group_num))
    return order

  def generator(self) -> "ModelConfig":
    """The ELECTRA generator body: fractions of width/depth, heads = width // 64 (electra:run_pretraining.py)."""
    hidden = max(1, round(self.hidden_size * self.generator_width_fraction))
    return dataclasses.replace(
        self, hidden_size=hidden, num_heads=max(1, hidden // 64), num_kv_heads=None, head_dim=None,
        intermediate_size=4 * hidden, num_layers=max(1, round(self.num_layers * self.generator_depth_fraction)),
        heads=("mlm",), head_act="gelu", pooler=False, generator_width_fraction=0.0)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape; -1 on one axis takes the remaining devices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
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

  def warmup(self, total_steps: int) -> int:
    if self.warmup_fraction is not None:
      return int(round(self.warmup_fraction * total_steps))
    return self.warmup_steps


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
