"""The schema of one encoder and its heads: ``ModelConfig``. Names follow the papers, not HF;
each family's values are ``families.py``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from bertjax.errors import ConfigError

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
PRETRAINING_HEADS = ("mlm", "nsp", "sop", "rtd", "sbo")
TASK_HEADS = ("classifier", "token_classifier", "qa")  # fine-tuning: at most one per model
# Activations a block tags with ``checkpoint_name`` (nn/attention.py, nn/mlp.py): what the
# ``names`` / ``offload`` remat policies may keep instead of recomputing.
CHECKPOINT_NAMES = ("query_proj", "key_proj", "value_proj", "attention_out", "mlp_in", "mlp_act")


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
  # A sentence-embedding model (trained with task=sentence_embedding, or imported from a
  # sentence-transformers folder): how `embed` pools it by default and whether it normalises;
  # export-hf writes the matching sentence-transformers modules. "" = not one.
  sentence_pooling: Literal["", "mean", "cls"] = ""
  sentence_normalize: bool = False
  attention_impl: Literal["auto", "einsum", "xla", "local", "flash", "splash", "cudnn"] = "auto"
  dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
  param_dtype: Literal["float32", "bfloat16"] = "float32"
  # How the layers run (not what they compute; parameters are stored per layer either way).
  # scan_layers: one traced block under lax.scan per run of identical layers (ModernBERT: per
  # global/local period), so compile time and code size stop growing with depth.
  # remat: what the backward pass recomputes instead of keeping -- none; full (everything);
  # dots (keeps matmul outputs without batch dims); names (keeps only remat_names);
  # offload (moves remat_names to host memory, TPU/GPU).
  scan_layers: bool = False
  remat: Literal["none", "full", "dots", "names", "offload"] = "none"
  remat_names: tuple[str, ...] = ("query_proj", "key_proj", "value_proj", "attention_out")

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
    bad = set(self.remat_names) - set(CHECKPOINT_NAMES)
    if bad:
      raise ConfigError(f"model.remat_names has unknown name(s) {sorted(bad)}; use "
                        f"{', '.join(CHECKPOINT_NAMES)}")
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
