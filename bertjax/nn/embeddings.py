"""Token + token-type + absolute-position embeddings, with optional LayerNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.nn.layers import Embed, dropout, dtypes, make_norm


def default_positions(input_ids: jax.Array, *, position_offset: int, pad_token_id: int,
                      segment_ids: jax.Array | None = None) -> jax.Array:
  """Position ids when the caller gives none.

  * packed rows (segment_ids): restart at ``position_offset`` for every document.
  * ``position_offset > 0`` (RoBERTa, fairseq ``make_positions``): real tokens count from the
    offset, padding tokens sit at ``offset - 1`` (= padding_idx).
  * otherwise ``0 .. len-1`` (BERT).
  """
  b, t = input_ids.shape
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is not None:
    starts = jnp.concatenate(
        [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    pos = idx - first + position_offset
    return jnp.where(segment_ids == 0, max(position_offset - 1, 0), pos)
  if position_offset:
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.where(real > 0, jnp.cumsum(real, axis=1) - 1 + position_offset, position_offset - 1)
  return idx


class Embeddings(nnx.Module):
  """``norm(word[ids] + position[pos] + token_type[types])`` -> dropout. Width = embed_size."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    e = cfg.embed_size
    kw = dict(rngs=rngs, std=cfg.initializer_range, **dtypes(cfg))
    self.word = Embed(cfg.vocab_size, e, axes=("vocab", "embed"), **kw)
    self.position = (Embed(cfg.max_position_embeddings, e, axes=("position", "embed"), **kw)
                     if cfg.position_embedding == "absolute" else None)
    self.token_type = (Embed(cfg.type_vocab_size, e, axes=("type", "embed"), **kw)
                       if cfg.type_vocab_size else None)
    self.norm = make_norm(cfg, e) if cfg.embedding_norm else None
    self.dropout_rate = (cfg.embedding_dropout if cfg.embedding_dropout is not None
                         else cfg.hidden_dropout)

  def __call__(self, input_ids, *, positions, token_type_ids=None, dropout_key=None):
    x = self.word(input_ids)
    if self.position is not None:
      x = x + self.position(positions)
    if self.token_type is not None:
      types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
      x = x + self.token_type(types)
    if self.norm is not None:
      x = self.norm(x)
    return dropout(x, self.dropout_rate, dropout_key)
