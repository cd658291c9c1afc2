"""Heads, separate from the bodies. Pretraining: MLM, NSP/SOP, ELECTRA replaced-token
detection, SpanBERT's span boundary. Fine-tuning: sequence classification, token
classification, extractive QA (transformers' ``*For{Sequence,Token}Classification`` and
``*ForQuestionAnswering`` heads, one module with the family's choices from the config)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.nn.layers import ACTIVATIONS, Dense, Embed, dropout, dtypes, make_norm, param, split_key


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """hidden: [batch, len, d]; positions: [batch, num_predictions] -> [batch, num_predictions, d]."""
  return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class MlmHead(nnx.Module):
  """dense(hidden -> embed) -> act -> norm -> decoder (tied to the word table) + own bias.
  ModernBERT: no biases but the decoder's; EuroBERT: no transform, an untied decoder.

  With ``masked_positions`` the logits are computed only there ([batch, P, vocab]), which is
  how BERT trains (and 1.27x faster for BERT-base on CPU than all positions).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    e = cfg.embed_size if cfg.mlm_transform else cfg.hidden_size
    kw = dict(rngs=rngs, std=cfg.initializer_range, **dtypes(cfg))
    self.transform = (Dense(cfg.hidden_size, e, axes=("embed", "hidden"), use_bias=cfg.use_bias,
                            **kw) if cfg.mlm_transform else None)
    self.act = cfg.head_act or cfg.hidden_act
    self.norm = make_norm(cfg, e) if cfg.mlm_transform else None
    self.decoder = (None if cfg.tie_word_embeddings else
                    Dense(e, cfg.vocab_size, axes=("hidden", "vocab"), use_bias=False, **kw))
    self.bias = (param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)), ("vocab",))
                 if cfg.decoder_bias else None)

  def __call__(self, hidden: jax.Array, word_embeddings: Embed,
               masked_positions: jax.Array | None = None) -> jax.Array:
    if masked_positions is not None:
      hidden = gather_positions(hidden, masked_positions)
    x = hidden
    if self.transform is not None:
      x = self.norm(ACTIVATIONS[self.act](self.transform(x)))
    logits = word_embeddings.attend(x) if self.decoder is None else self.decoder(x)
    return logits if self.bias is None else logits + self.bias[...].astype(logits.dtype)


class SequenceRelationshipHead(nnx.Module):
  """NSP (BERT) or SOP (ALBERT): a 2-way classifier over the pooled output."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.dense = Dense(cfg.hidden_size, 2, axes=("embed", "classes"), rngs=rngs,
                       std=cfg.initializer_range, **dtypes(cfg))

  def __call__(self, pooled: jax.Array) -> jax.Array:
    return self.dense(pooled)


class ReplacedTokenHead(nnx.Module):
  """ELECTRA discriminator: dense -> act -> dense(1). No LayerNorm. Logit > 0 means replaced."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, std=cfg.initializer_range, **dtypes(cfg))
    self.dense = Dense(cfg.hidden_size, cfg.hidden_size, axes=("embed", "hidden"), **kw)
    self.prediction = Dense(cfg.hidden_size, 1, axes=("hidden", "classes"), **kw)
    self.act = cfg.hidden_act

  def __call__(self, hidden: jax.Array) -> jax.Array:
    return self.prediction(ACTIVATIONS[self.act](self.dense(hidden)))[..., 0]


class SpanBoundaryHead(nnx.Module):
  """SpanBERT's span-boundary objective (SpanBERT pair_bert.py BertPairTargetPredictionHead):
  from the tokens just outside a span and a relative-position embedding, two GeLU + LayerNorm
  layers then the tied decoder predict each token inside the span."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    h, size = cfg.hidden_size, cfg.sbo_position_size
    kw = dict(rngs=rngs, std=cfg.initializer_range, **dtypes(cfg))
    self.position = Embed(cfg.sbo_max_targets, size, axes=("position", "embed_factor"), **kw)
    self.dense1 = Dense(2 * h + size, h, axes=("embed_factor", "embed"), **kw)
    self.norm1 = make_norm(cfg)
    self.dense2 = Dense(h, h, axes=("embed", "hidden"), **kw)
    self.norm2 = make_norm(cfg)
    self.bias = param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)), ("vocab",))

  def __call__(self, hidden, word_embeddings: Embed, left, right, relative) -> jax.Array:
    """left/right/relative: [batch, P] -> logits [batch, P, vocab]."""
    x = jnp.concatenate([gather_positions(hidden, left), gather_positions(hidden, right),
                         self.position(relative)], axis=-1)
    gelu = ACTIVATIONS["gelu"]
    x = self.norm2(gelu(self.dense2(self.norm1(gelu(self.dense1(x))))))
    return word_embeddings.attend(x) + self.bias[...].astype(x.dtype)


class TaskHead(nnx.Module):
  """[dense -> act [-> norm]] -> dropout -> output, over pooled or per-token features.

  ``kind``: "classifier" ([batch, labels] from the pooled features), "token_classifier"
  ([batch, len, labels]) or "qa" ([batch, len, 2]: start and end logits)."""

  def __init__(self, cfg, kind: str, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    kw = dict(rngs=rngs, std=cfg.initializer_range, **dtypes(cfg))
    transform = (cfg.classifier_transform == "all" or
                 (cfg.classifier_transform == "sequence" and kind == "classifier"))
    self.pooling = cfg.classifier_pooling if kind == "classifier" else None
    self.transform = (Dense(h, h, axes=("embed", "hidden"), use_bias=cfg.classifier_bias, **kw)
                      if transform else None)
    self.act = cfg.classifier_act
    self.norm = make_norm(cfg) if transform and cfg.classifier_norm else None
    self.output = Dense(h, cfg.num_labels, axes=("hidden", "classes"), **kw)
    self.rate = (cfg.classifier_dropout if cfg.classifier_dropout is not None
                 else cfg.hidden_dropout)

  def __call__(self, hidden: jax.Array, pooled: jax.Array | None,
               padding_mask: jax.Array | None = None, dropout_key=None) -> jax.Array:
    """hidden: [batch, len, d]; pooled: the encoder's pooler output (or None)."""
    k1, k2 = split_key(dropout_key, 2)
    if self.pooling == "pooler":
      x = pooled
    elif self.pooling == "cls":
      x = hidden[:, 0]
    elif self.pooling == "mean":
      x = masked_mean(hidden, padding_mask)
    else:  # per-token features ("late" pooling averages the logits below)
      x = hidden
    if self.transform is not None:
      x = ACTIVATIONS[self.act](self.transform(dropout(x, self.rate, k1)))
      if self.norm is not None:
        x = self.norm(x)
    logits = self.output(dropout(x, self.rate, k2))
    if self.pooling == "late":
      logits = masked_mean(logits, padding_mask)
    return logits


def masked_mean(x: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
  """[batch, len, d] -> [batch, d], averaging real tokens only."""
  if padding_mask is None:
    return x.mean(axis=1)
  w = padding_mask.astype(x.dtype)[..., None]
  return (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
