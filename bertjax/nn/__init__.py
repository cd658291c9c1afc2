"""Shared building blocks for every family."""

from bertjax.nn.attention import Attention, AttentionMask
from bertjax.nn.embeddings import Embeddings, default_positions
from bertjax.nn.encoder import Block, Encoder, EncoderOutput, Pooler
from bertjax.nn.layers import (ACTIVATIONS, Dense, Embed, LayerNorm, RMSNorm, dropout, make_norm,
                               split_key)
from bertjax.nn.mlp import Mlp

__all__ = [
    "ACTIVATIONS", "Attention", "AttentionMask", "Block", "Dense", "Embed", "Embeddings", "Encoder",
    "EncoderOutput", "LayerNorm", "Mlp", "Pooler", "RMSNorm", "default_positions", "dropout",
    "make_norm", "split_key",
]
