"""The encoder body shared by every family: embeddings -> [projection] -> blocks -> [final norm].

A ``Block`` is one transformer layer, post-norm (BERT) or pre-norm (ModernBERT/EuroBERT).
ALBERT's cross-layer sharing is a schedule over a smaller list of blocks (``block_schedule``).

How the layers run is separate from what they hold. Parameters are always stored per block
(``encoder.layers.<i>``: model folders, checkpoints, HF names and layer-wise LR decay see one
layout). With ``model.scan_layers`` the forward pass cuts the applied layers into segments
(``plan_segments``): a run of G identical groups of p layers -- p=1 for BERT-lineage and
EuroBERT, ModernBERT's global/local period, ALBERT's inner group -- becomes one ``lax.scan``
whose body traces p layers once; distinct blocks are stacked along a new leading axis for it
(sharded like the layer, so FSDP gathers one layer at a time), a shared ALBERT block is closed
over. Every layer application goes through ``jax.checkpoint`` with the ``model.remat`` policy
(``nn/remat.py``).
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
from bertjax.nn.remat import checkpointed
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


class Segment(NamedTuple):
  """Applied layers ``start .. start + groups * period - 1``; ``groups`` > 1 runs as a scan."""
  start: int
  period: int
  groups: int


def _layer_signature(cfg, block: int, shared: bool) -> tuple:
  """What makes two blocks trace to the same program: attention norm, window, RoPE theta (and,
  when blocks are shared, the block itself)."""
  has_norm = block > 0 or cfg.first_layer_attention_norm or cfg.norm_position == "post"
  theta = cfg.layer_theta(block) if cfg.position_embedding == "rope" else None
  return (block if shared else None, has_norm, cfg.is_local_layer(block), theta)


def plan_segments(cfg, scan: bool | None = None) -> tuple[Segment, ...]:
  """Cut the applied layers into scanned runs of identical groups and single layers.

  The period is ModernBERT's global/local cycle (``global_every``), ALBERT's inner group, else
  1; layers whose signature breaks the cycle (ModernBERT's layer 0 without an attention norm)
  stay single. ``scan`` False: every layer single (the unrolled program)."""
  schedule = cfg.block_schedule()
  n, shared = len(schedule), cfg.num_blocks < len(schedule)
  scan = cfg.scan_layers if scan is None else scan
  period = (cfg.global_every if cfg.local_window is not None
            else cfg.inner_group_num if shared else 1)
  sig = [_layer_signature(cfg, b, shared) for b in schedule]
  segments, i = [], 0
  while i < n:
    groups = 1
    while scan and i + (groups + 1) * period <= n and all(
        sig[i + groups * period + j] == sig[i + j] for j in range(period)):
      groups += 1
    if groups > 1:
      segments.append(Segment(i, period, groups))
      i += groups * period
    else:
      segments.append(Segment(i, 1, 1))
      i += 1
  return tuple(segments)


def _stack(states: list) -> nnx.State:
  """Per-layer states -> one state with a leading layer axis, sharded like one layer."""
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

  def keep_layout(var):
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
      return var
    return var.replace(sharding.constrain(var.get_value(), (None, *axes)))

  return jax.tree.map(keep_layout, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))


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
    self.segments = plan_segments(cfg)
    self.remat = (cfg.remat, tuple(cfg.remat_names))
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
    layer_keys = None if k_layers is None else jax.random.split(k_layers, len(self.schedule))
    # one per applied block, as transformers records them (ALBERT too)
    x, hidden_states = self._layers(x, mask, positions, layer_keys, output_hidden_states)
    if self.final_norm is not None:
      x = self.final_norm(x)
      hidden_states[-1] = x  # transformers reports the normed output last (pre-norm models)
    pooled = self.pooler(x) if self.pooler is not None else None
    return EncoderOutput(x, pooled, tuple(hidden_states) if output_hidden_states else None)

  def _layer_fn(self, block: int):
    """Block ``block`` as a pure function ``(state, x, mask, positions, key) -> x`` under the
    remat policy, and its current state."""
    graphdef, state = nnx.split(self.layers[block])

    def apply(state, x, mask, positions, key):
      return nnx.merge(graphdef, state)(x, mask, positions=positions, dropout_key=key)

    return checkpointed(apply, *self.remat), state

  def _layers(self, x, mask, positions, keys, collect: bool):
    """Run every applied layer; returns the output and [input, each layer's output] (only
    unrolled layers' outputs unless ``collect``: a scan keeps none it is not asked for)."""
    outputs = [x]
    key_at = lambda i: None if keys is None else keys[i]
    for seg in self.segments:
      blocks = [[self.schedule[seg.start + g * seg.period + j] for g in range(seg.groups)]
                for j in range(seg.period)]  # [position in group][group]
      if seg.groups == 1:
        fn, state = self._layer_fn(blocks[0][0])
        x = fn(state, x, mask, positions, key_at(seg.start))
        outputs.append(x)
        continue
      fns, consts, stacked = [], [], []
      for column in blocks:
        fn, state = self._layer_fn(column[0])
        fns.append(fn)
        shared = len(set(column)) == 1  # ALBERT: the same block every group, closed over
        consts.append(state if shared else None)
        stacked.append(None if shared else _stack([nnx.state(self.layers[b]) for b in column]))
      n = seg.groups * seg.period
      seg_keys = (None if keys is None else
                  keys[seg.start:seg.start + n].reshape(seg.groups, seg.period, *keys.shape[1:]))

      def body(h, xs, fns=fns, consts=consts):
        states, ks = xs
        outs = []
        for j, fn in enumerate(fns):
          state = consts[j] if consts[j] is not None else states[j]
          h = fn(state, h, mask, positions, None if ks is None else ks[j])
          outs.append(h)
        return h, (tuple(outs) if collect else None)

      x, ys = jax.lax.scan(body, x, (tuple(stacked), seg_keys))
      if collect:
        outputs.extend(ys[j][g] for g in range(seg.groups) for j in range(seg.period))
      else:
        outputs.extend([x] * n)  # placeholders: the list keeps one entry per applied layer
    return x, outputs
