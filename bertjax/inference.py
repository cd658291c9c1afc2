"""Batch inference helpers behind ``bertjax embed`` and ``bertjax fill-mask``."""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax.data.tokenizer import Encoding, Tokenizer
from bertjax.errors import UserError
from bertjax.models import Model


def pad_batch(encodings: Sequence[Encoding], pad_id: int) -> dict[str, np.ndarray]:
  length = max(len(e) for e in encodings)
  ids = np.full((len(encodings), length), pad_id, np.int32)
  types = np.zeros_like(ids)
  mask = np.zeros_like(ids, dtype=bool)
  for i, e in enumerate(encodings):
    ids[i, :len(e)] = e.ids
    types[i, :len(e)] = e.type_ids
    mask[i, :len(e)] = True
  return {"input_ids": ids, "token_type_ids": types, "padding_mask": mask}


@functools.lru_cache(maxsize=8)
def _forward_fn(graphdef):

  @jax.jit
  def forward(state, input_ids, token_type_ids, padding_mask):
    model = nnx.merge(graphdef, state)
    return model(input_ids, token_type_ids=token_type_ids, padding_mask=padding_mask,
                 output_hidden_states=True)

  return forward


def forward(model: Model, batch: dict[str, np.ndarray]):
  graphdef, state = nnx.split(model)
  return _forward_fn(graphdef)(state, batch["input_ids"], batch["token_type_ids"],
                               batch["padding_mask"])


def embed(model: Model, tokenizer: Tokenizer, texts: Sequence[str], *,
          pooling: Literal["cls", "mean", "none"] = "mean", layer: int = -1,
          max_length: int | None = None) -> np.ndarray | list[np.ndarray]:
  """Sentence embeddings ([n, hidden]) or, with pooling='none', one [len, hidden] per text.

  ``layer`` indexes hidden states: 0 = embedding output, -1 = last layer."""
  max_length = max_length or model.config.max_position_embeddings - model.config.position_offset
  encodings = [tokenizer.encode(t, max_length=max_length) for t in texts]
  batch = pad_batch(encodings, tokenizer.pad_id)
  hidden_states = forward(model, batch).hidden_states
  if not -len(hidden_states) <= layer < len(hidden_states):
    raise UserError(f"--layer {layer} is out of range: the model has {len(hidden_states)} "
                     "hidden states (0 = embeddings)")
  h = np.asarray(hidden_states[layer], np.float32)
  mask = batch["padding_mask"]
  if pooling == "cls":
    return h[:, 0]
  if pooling == "mean":
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  if pooling == "none":
    return [h[i, :mask[i].sum()] for i in range(len(texts))]
  raise UserError(f"unknown pooling {pooling!r}; use cls, mean or none")


def encode_with_masks(tokenizer: Tokenizer, text: str) -> Encoding:
  """Tokenize ``text`` keeping each ``[MASK]`` (or the tokenizer's own mask token) as one id."""
  marker = tokenizer.specials.mask
  parts = text.replace("[MASK]", marker).split(marker)
  ids, offsets, words = [], [], []
  for i, part in enumerate(parts):
    piece = part.rstrip() if i < len(parts) - 1 else part  # the mask token absorbs the space
    p_ids, p_off, p_words = tokenizer.tokenize(piece) if piece.strip() else ([], [], [])
    base = max((w for w in words if w is not None), default=-1) + 1
    ids += p_ids
    offsets += p_off
    words += [w + base for w in p_words]
    if i < len(parts) - 1:
      ids.append(tokenizer.mask_id), offsets.append((0, 0)), words.append(base + len(set(p_words)))
  return tokenizer.build((ids, offsets, words))


def fill_mask(model: Model, tokenizer: Tokenizer, text: str, *, top_k: int = 5) -> list[dict]:
  if model.mlm is None:
    raise UserError("this checkpoint has no MLM head; fill-mask needs one (e.g. a "
                     "*ForMaskedLM or *ForPreTraining import)")
  enc = encode_with_masks(tokenizer, text)
  positions = [i for i, t in enumerate(enc.ids) if t == tokenizer.mask_id]
  if not positions:
    raise UserError(f"no {tokenizer.specials.mask} (or [MASK]) in the text")
  batch = pad_batch([enc], tokenizer.pad_id)
  logits = np.asarray(forward(model, batch).mlm_logits[0], np.float32)
  results = []
  for pos in positions:
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits[pos])))
    top = np.argsort(-probs)[:top_k]
    results.append({"position": pos, "predictions": [
        {"token": tokenizer.id_to_token(int(i)), "id": int(i), "probability": float(probs[i]),
         "logit": float(logits[pos, i])}
        for i in top]})
  return results
