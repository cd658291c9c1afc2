"""Batch inference helpers behind ``bertjax embed`` and ``bertjax fill-mask``."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Iterable, Iterator, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax import storage
from bertjax.data.buckets import sorted_batches
from bertjax.data.sources import read_jsonl
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


# Fine steps where texts usually are (inference compiles cost ~1 s each, padding costs every
# batch): multiples of 8 to 128, of 32 to 512, then powers of two; capped at max_length.
EMBED_BUCKETS = (tuple(range(8, 129, 8)) + tuple(range(160, 513, 32))
                 + (1024, 2048, 4096, 8192))
POOLINGS = ("cls", "mean", "none")


def _pooled(graphdef, pooling: str, layer: int, normalize: bool, state, input_ids, padding_mask):
  """The encoder only (no heads), one hidden state, pooled on the device."""
  model = nnx.merge(graphdef, state)
  out = model.encoder(input_ids, token_type_ids=jnp.zeros_like(input_ids),
                      padding_mask=padding_mask, output_hidden_states=layer != -1)
  h = (out.last_hidden_state if layer == -1 else out.hidden_states[layer]).astype(jnp.float32)
  if pooling == "none":
    return h
  if pooling == "cls":
    v = h[:, 0]
  else:
    m = padding_mask[..., None].astype(jnp.float32)
    v = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  if normalize:
    v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  return v


class Embedder:
  """Texts -> vectors, any number of them: each block of texts is tokenized in one batched call,
  sorted by length and cut into batches of ``batch_size`` rows, each padded only to its length
  bucket (one compile per bucket, reused for every later batch); results come back in input
  order. ``pooling='none'`` gives one ``[len, hidden]`` array per text; ``normalize`` scales
  pooled vectors to unit length (sentence-transformers' Normalize module)."""

  def __init__(self, model: Model, tokenizer: Tokenizer, *, pooling: str = "mean",
               layer: int = -1, max_length: int | None = None, batch_size: int = 32,
               normalize: bool = False):
    cfg = model.config
    if pooling not in POOLINGS:
      raise UserError(f"unknown pooling {pooling!r}; use cls, mean or none")
    states = cfg.num_layers + 1
    if not -states <= layer < states:
      raise UserError(f"--layer {layer} is out of range: the model has {states} "
                       "hidden states (0 = embeddings)")
    limit = cfg.max_position_embeddings - cfg.position_offset
    self.max_length = min(max_length or limit, limit)
    self.buckets = tuple(b for b in EMBED_BUCKETS if b < self.max_length) + (self.max_length,)
    self.tokenizer, self.pooling, self.batch_size = tokenizer, pooling, batch_size
    self.hidden_size = cfg.hidden_size
    graphdef, self.state = nnx.split(model)
    layer = layer % states if layer != -1 else -1
    self.fn = jax.jit(functools.partial(_pooled, graphdef, pooling, layer, normalize))

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """[CLS] ids [SEP] per text, truncated to max_length (the template's single-segment form)."""
    tok = self.tokenizer
    body = self.max_length - tok.num_special_tokens[0]
    return [np.asarray([tok.cls_id, *ids[:body], tok.sep_id], np.int32)
            for ids, _, _ in tok.tokenize_batch(list(texts))]

  def __call__(self, texts: Sequence[str]) -> np.ndarray | list[np.ndarray]:
    """One block of texts -> [n, hidden] (``pooling='none'``: a list of [len, hidden])."""
    rows = self.encode(texts)
    lengths = np.asarray([len(r) for r in rows])
    out: list | np.ndarray | None = [None] * len(rows) if self.pooling == "none" else None
    pad = self.tokenizer.pad_id
    for bucket, idx in sorted_batches(lengths, self.batch_size, self.buckets):
      ids = np.full((self.batch_size, bucket), pad, np.int32)
      for r, i in enumerate(idx):
        ids[r, :lengths[i]] = rows[i]
      mask = np.arange(bucket)[None] < np.concatenate(
          [lengths[idx], np.ones(self.batch_size - len(idx), int)])[:, None]
      vectors = np.asarray(self.fn(self.state, ids, mask))[:len(idx)]
      if self.pooling == "none":
        for r, i in enumerate(idx):
          out[i] = vectors[r, :lengths[i]]
      else:
        if out is None:
          out = np.empty((len(rows), vectors.shape[-1]), np.float32)
        out[idx] = vectors
    return out if out is not None else np.zeros((0, self.hidden_size), np.float32)

  def stream(self, texts: Iterable[str], block: int = 8192) -> Iterator[np.ndarray]:
    """Embed an iterable of any length ``block`` texts at a time (bounded memory), yielding
    each text's vector in input order."""
    chunk: list[str] = []
    for text in texts:
      chunk.append(text)
      if len(chunk) == block:
        yield from self(chunk)
        chunk = []
    if chunk:
      yield from self(chunk)


def read_texts(path: str, field: str = "text") -> Iterator[str]:
  """Texts from a .jsonl file (``field`` of each object) or a text file (one per line)."""
  if str(path).endswith((".jsonl", ".jsonl.gz")):
    for n, record in read_jsonl(path, error=UserError):
      text = record.get(field)
      if not isinstance(text, str):
        what = "no field" if field not in record else "a non-string field"
        raise UserError(f"{path}:{n}: {what} {field!r} (set --field)")
      yield text
    return
  with storage.as_path(path).open(encoding="utf-8") as f:
    for line in f:
      yield line.rstrip("\n").rstrip("\r")


def check_text_file(path: str, field: str = "text") -> None:
  """A one-line error for a missing input file or one whose first record lacks the field."""
  if not storage.as_path(path).is_file():
    raise UserError(f"--input {path}: no such file")
  for _ in zip(range(1), read_texts(path, field)):
    pass


def write_embeddings(embedder: "Embedder", texts, output: str) -> int:
  """Embed ``texts()`` (a function returning a fresh iterator) into ``output`` in input order,
  whole or not at all: .npy [n, hidden] (filled in place; one counting pass first), .jsonl
  ({"text", "embedding"} per line, streamed), .npz with --pooling none (ragged, in memory)."""
  out = storage.as_path(output)
  if not storage.is_url(out) and (out.is_dir() or not out.parent.is_dir()):
    raise UserError(f"--output {output}: " + ("is a folder" if out.is_dir() else
                                               "is in a folder that does not exist"))
  folder = None if storage.is_url(out) else str(out.parent)
  fd, tmp = tempfile.mkstemp(suffix=out.suffix, prefix=f".{out.name}.", dir=folder)
  os.close(fd)
  n = 0
  try:
    if output.endswith(".npy"):
      count = sum(1 for _ in texts())
      array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(count, embedder.hidden_size))
      for n, vector in enumerate(embedder.stream(texts()), 1):
        array[n - 1] = vector
      array.flush()
      del array
    elif output.endswith(".jsonl"):
      with open(tmp, "w", encoding="utf-8") as f:
        for n, (text, vector) in enumerate(zip(texts(), embedder.stream(texts())), 1):
          f.write(json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False)
                  + "\n")
    else:  # ragged token vectors: padded [n, len, hidden] + mask, no pickle
      rows = list(embedder.stream(texts()))
      n, longest = len(rows), max((len(r) for r in rows), default=0)
      padded = np.zeros((n, longest, embedder.hidden_size), np.float32)
      mask = np.zeros((n, longest), bool)
      for i, r in enumerate(rows):
        padded[i, :len(r)], mask[i, :len(r)] = r, True
      np.savez(tmp, embeddings=padded, mask=mask)
    if storage.is_url(out):
      storage.copy_file(tmp, out)
    else:
      os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return n


def embed(model: Model, tokenizer: Tokenizer, texts: Sequence[str], *,
          pooling: Literal["cls", "mean", "none"] = "mean", layer: int = -1,
          max_length: int | None = None, batch_size: int = 32) -> np.ndarray | list[np.ndarray]:
  """Sentence embeddings ([n, hidden]) or, with pooling='none', one [len, hidden] per text.

  ``layer`` indexes hidden states: 0 = embedding output, -1 = last layer."""
  return Embedder(model, tokenizer, pooling=pooling, layer=layer, max_length=max_length,
                  batch_size=batch_size)(texts)


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
