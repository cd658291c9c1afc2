"""The encoder body shared by every family: embeddings -> [projection] -> blocks -> [final norm].

A ``Block`` is one transformer layer, post-norm (BERT) or pre-norm (ModernBERT/EuroBERT).
ALBERT's cross-layer sharing is a schedule over a smaller list of blocks (``block_schedule``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax import sharding
from bertjax.nn.attention import Attention, AttentionMask
from bertjax.nn.embeddings import Embeddings, default_positions
from bertjax.nn.layers import Dense, dropout, dtypes, make_norm, split_key
from bertjax.nn.mlp import Mlp
from bertjax.nn.rope import apply_rope


class Block(nnx.Module):
  """One layer. ``layer`` fixes its attention type: local window and RoPE theta (ModernBERT
  alternates global/local layers) and whether it has an attention norm (none at layer 0)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, layer: int = 0):
    self.attention = Attention(cfg, rngs=rngs)
    has_norm = layer > 0 or cfg.first_layer_attention_norm or cfg.norm_position == "post"
    self.attention_norm = make_norm(cfg) if has_norm else None
    self.mlp = Mlp(cfg, rngs=rngs)
    self.mlp_norm = make_norm(cfg)
    self.pre_norm = cfg.norm_position == "pre"
    # dropout sites and rates (ModelConfig: embedding_dropout .. mlp_dropout_inside)
    self.attention_output_rate = (cfg.attention_output_dropout
                                  if cfg.attention_output_dropout is not None
                                  else cfg.hidden_dropout)
    self.mlp_rate = cfg.hidden_dropout
    self.mlp_dropout_inside = cfg.mlp_dropout_inside
    self.window = cfg.local_window if cfg.is_local_layer(layer) else None
    self.theta = cfg.layer_theta(layer) if cfg.position_embedding == "rope" else None

  def __call__(self, x: jax.Array, mask: AttentionMask, *, positions=None, dropout_key=None):
    k_attn, k_attn_out, k_mlp = split_key(dropout_key, 3)
    attn_kw = dict(window=self.window, dropout_key=k_attn)
    if self.theta is not None:
      attn_kw["rope"] = functools.partial(apply_rope, positions=positions, theta=self.theta)
    attention = lambda h: dropout(self.attention(h, mask, **attn_kw), self.attention_output_rate,
                                  k_attn_out)
    if self.pre_norm:
      x = x + attention(self.attention_norm(x) if self.attention_norm is not None else x)
      x = x + self._mlp(self.mlp_norm(x), k_mlp)
    else:
      x = self.attention_norm(x + attention(x))
      x = self.mlp_norm(x + self._mlp(x, k_mlp))
    return sharding.constrain(x, ("batch", "length", "act_embed"))

  def _mlp(self, x: jax.Array, key) -> jax.Array:
    if self.mlp_dropout_inside:
      return self.mlp(x, self.mlp_rate, key)
    return dropout(self.mlp(x), self.mlp_rate, key)


class EncoderOutput(NamedTuple):
  last_hidden_state: jax.Array  # [batch, len, hidden]
  pooled: jax.Array | None  # [batch, hidden] (tanh pooler over the first token)
  hidden_states: tuple[jax.Array, ...] | None  # input to block 0, then every block's output


class Pooler(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.dense = Dense(cfg.hidden_size, cfg.hidden_size, axes=("embed", "hidden"), rngs=rngs,
                       std=cfg.initializer_range, **dtypes(cfg))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(self.dense(x[:, 0]))


class Encoder(nnx.Module):
  """A family-agnostic encoder. ``embeddings`` may be passed in to share it (ELECTRA generator)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, embeddings: Embeddings | None = None):
    self.embeddings = embeddings if embeddings is not None else Embeddings(cfg, rngs=rngs)
    self.embedding_projection = (
        Dense(cfg.embed_size, cfg.hidden_size, axes=("embed_factor", "embed"), rngs=rngs,
              std=cfg.initializer_range, **dtypes(cfg))
        if cfg.embed_size != cfg.hidden_size else None)
    self.layers = nnx.List([Block(cfg, rngs=rngs, layer=i) for i in range(cfg.num_blocks)])
    self.schedule = tuple(cfg.block_schedule())
    self.final_norm = make_norm(cfg) if cfg.norm_position == "pre" else None
    self.pooler = Pooler(cfg, rngs=rngs) if cfg.pooler else None
    self.position_offset = cfg.position_offset
    self.pad_token_id = cfg.pad_token_id

  def __call__(self, input_ids: jax.Array, *, token_type_ids: jax.Array | None = None,
               padding_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, dropout_key: jax.Array | None = None,
               output_hidden_states: bool = False) -> EncoderOutput:
    """input_ids: [batch, len]. padding_mask: True for real tokens. segment_ids: packed docs."""
    input_ids = sharding.constrain(input_ids, ("batch", "length"))
    if positions is None:
      positions = default_positions(input_ids, position_offset=self.position_offset,
                                    pad_token_id=self.pad_token_id, segment_ids=segment_ids)
    k_emb, k_layers = split_key(dropout_key, 2)
    x = self.embeddings(input_ids, positions=positions, token_type_ids=token_type_ids,
                        dropout_key=k_emb)
    if self.embedding_projection is not None:
      x = self.embedding_projection(x)
    mask = AttentionMask(padding_mask=padding_mask, segment_ids=segment_ids)
    layer_keys = split_key(k_layers, len(self.schedule))
    hidden_states = [x]
    for i, block_index in enumerate(self.schedule):
      x = self.layers[block_index](x, mask, positions=positions, dropout_key=layer_keys[i])
      hidden_states.append(x)  # one per applied block, as transformers records them (ALBERT too)
    if self.final_norm is not None:
      x = self.final_norm(x)
      hidden_states[-1] = x  # transformers reports the normed output last (pre-norm models)
    pooled = self.pooler(x) if self.pooler is not None else None
    return EncoderOutput(x, pooled, tuple(hidden_states) if output_hidden_states else None)
