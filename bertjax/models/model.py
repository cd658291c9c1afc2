"""``Model``: one encoder body plus the pretraining and task heads its config names.

Families differ only in config values (``config/families.py``) and in weight names for
Hugging Face interop (``interop/<family>.py``); the module tree is the same for all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from bertjax.config import ModelConfig
from bertjax.heads import (MlmHead, ReplacedTokenHead, SequenceRelationshipHead, SpanBoundaryHead,
                           TaskHead)
from bertjax.nn.encoder import Encoder


class ModelOutput(NamedTuple):
  last_hidden_state: jax.Array  # [batch, len, hidden]
  pooled: jax.Array | None  # [batch, hidden]
  hidden_states: tuple[jax.Array, ...] | None
  mlm_logits: jax.Array | None  # [batch, len or num_predictions, vocab]
  seq_relationship_logits: jax.Array | None  # [batch, 2] (NSP / SOP)
  rtd_logits: jax.Array | None  # [batch, len] (ELECTRA discriminator)
  # fine-tuning head: classifier [batch, labels]; token_classifier [batch, len, labels];
  # qa [batch, len, 2] (start, end)
  task_logits: jax.Array | None = None


class Model(nnx.Module):
  """Encoder + heads. ELECTRA's joint model adds a generator body sharing the embeddings."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.mlm = MlmHead(cfg, rngs=rngs) if "mlm" in cfg.heads else None
    self.seq_relationship = (SequenceRelationshipHead(cfg, rngs=rngs)
                             if {"nsp", "sop"} & set(cfg.heads) else None)
    self.rtd = ReplacedTokenHead(cfg, rngs=rngs) if "rtd" in cfg.heads else None
    self.sbo = SpanBoundaryHead(cfg, rngs=rngs) if "sbo" in cfg.heads else None
    self.task = TaskHead(cfg, cfg.task_head, rngs=rngs) if cfg.task_head else None
    if cfg.generator_width_fraction:
      gen = cfg.generator()
      self.generator = Encoder(gen, rngs=rngs, embeddings=self.encoder.embeddings)
      self.generator_mlm = MlmHead(gen, rngs=rngs)
    else:
      self.generator = self.generator_mlm = None

  def __call__(self, input_ids: jax.Array, *, token_type_ids=None, padding_mask=None,
               segment_ids=None, positions=None, masked_positions=None, dropout_key=None,
               output_hidden_states: bool = False) -> ModelOutput:
    out = self.encoder(input_ids, token_type_ids=token_type_ids, padding_mask=padding_mask,
                       segment_ids=segment_ids, positions=positions, dropout_key=dropout_key,
                       output_hidden_states=output_hidden_states)
    h = out.last_hidden_state
    mlm = (self.mlm(h, self.encoder.embeddings.word, masked_positions)
           if self.mlm is not None else None)
    seq = self.seq_relationship(out.pooled) if self.seq_relationship is not None else None
    rtd = self.rtd(h) if self.rtd is not None else None
    task = None
    if self.task is not None:
      task_key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
      task = self.task(h, out.pooled, padding_mask, task_key)
    return ModelOutput(h, out.pooled, out.hidden_states, mlm, seq, rtd, task)

  def generator_logits(self, input_ids: jax.Array, *, token_type_ids=None, padding_mask=None,
                       segment_ids=None, positions=None, masked_positions=None,
                       dropout_key=None) -> jax.Array:
    """ELECTRA generator MLM logits (its body shares this model's embeddings)."""
    if self.generator is None:
      raise ValueError("this model has no generator (set model.generator_width_fraction > 0)")
    out = self.generator(input_ids, token_type_ids=token_type_ids, padding_mask=padding_mask,
                         segment_ids=segment_ids, positions=positions, dropout_key=dropout_key)
    return self.generator_mlm(out.last_hidden_state, self.encoder.embeddings.word, masked_positions)

