"""Declaring how bertjax parameter paths map to Hugging Face state-dict keys.

A family builds a ``NameTable``: for every bertjax parameter path, the HF key and the layout
transform. ``body=True`` keys live under the family prefix (``bert.``) in task models.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Linear:
  """torch ``nn.Linear.weight`` [out, in] <-> bertjax kernel [*in_shape, *out_shape]."""

  num_in: int = 1

  def to_ours(self, a: np.ndarray, shape) -> np.ndarray:
    return a.T.reshape(shape)

  def to_hf(self, a: np.ndarray) -> np.ndarray:
    return a.reshape(math.prod(a.shape[:self.num_in]), -1).T


@dataclasses.dataclass(frozen=True)
class Same:
  """Same layout up to a reshape (embeddings, biases, norm scales); ``flat`` exports 1-D."""

  flat: bool = False

  def to_ours(self, a: np.ndarray, shape) -> np.ndarray:
    return a.reshape(shape)

  def to_hf(self, a: np.ndarray) -> np.ndarray:
    return a.reshape(-1) if self.flat else a


@dataclasses.dataclass(frozen=True)
class Part:
  """Part ``index`` of ``count`` equal row blocks of one fused HF weight (ModernBERT's Wqkv and
  Wi). Import slices; export concatenates the parts in order."""

  inner: Linear
  index: int
  count: int

  def to_ours(self, a: np.ndarray, shape) -> np.ndarray:
    rows = a.shape[0] // self.count
    if rows * self.count != a.shape[0]:
      raise ValueError(f"cannot split {a.shape[0]} rows into {self.count} parts")
    return self.inner.to_ours(a[self.index * rows:(self.index + 1) * rows], shape)

  def to_hf(self, a: np.ndarray) -> np.ndarray:
    return self.inner.to_hf(a)


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str
  transform: Linear | Same | Part
  body: bool = True


class NameTable(dict):
  """bertjax path -> Entry."""

  def add(self, ours: str, hf: str, transform, body: bool = True) -> None:
    if ours in self:
      raise ValueError(f"duplicate weight name {ours}")
    self[ours] = Entry(hf, transform, body)

  def linear(self, ours: str, hf: str, *, num_in: int = 1, bias: bool = True,
             body: bool = True) -> None:
    self.add(f"{ours}.kernel", f"{hf}.weight", Linear(num_in), body)
    if bias:
      self.add(f"{ours}.bias", f"{hf}.bias", Same(flat=True), body)

  def fused(self, ours: list[str], hf: str, *, body: bool = True) -> None:
    """Several bias-free bertjax projections stored as one HF weight, in this order."""
    for i, name in enumerate(ours):
      self.add(f"{name}.kernel", f"{hf}.weight", Part(Linear(1), i, len(ours)), body)

  def norm(self, ours: str, hf: str, *, bias: bool = True, body: bool = True) -> None:
    self.add(f"{ours}.scale", f"{hf}.weight", Same(flat=True), body)
    if bias:
      self.add(f"{ours}.bias", f"{hf}.bias", Same(flat=True), body)

  def embed(self, ours: str, hf: str, body: bool = True) -> None:
    self.add(f"{ours}.embedding", f"{hf}.weight", Same(), body)

  def block(self, ours: str, hf: str, names: dict[str, str], cfg) -> None:
    """One transformer block from a {bertjax submodule: HF submodule} dict."""
    for sub, hf_sub in names.items():
      if sub.endswith("norm"):
        self.norm(f"{ours}.{sub}", f"{hf}.{hf_sub}", bias=cfg.norm_bias and cfg.norm_type != "rmsnorm")
      else:
        self.linear(f"{ours}.{sub}", f"{hf}.{hf_sub}", num_in=2 if sub == "attention.out" else 1,
                    bias=cfg.use_bias)

  def embeddings(self, cfg, names: dict[str, str]) -> None:
    """Word/position/token-type tables and the embedding norm, by HF name."""
    self.embed("encoder.embeddings.word", names["word"])
    if cfg.position_embedding == "absolute":
      self.embed("encoder.embeddings.position", names["position"])
    if cfg.type_vocab_size:
      self.embed("encoder.embeddings.token_type", names["token_type"])
    if cfg.embedding_norm:
      self.norm("encoder.embeddings.norm", names["norm"], bias=cfg.norm_bias)

  def mlm_head(self, cfg, names: dict[str, str]) -> None:
    """MLM transform, norm, output bias and (if untied) the decoder; HF head keys are top-level."""
    if cfg.mlm_transform:
      self.linear("mlm.transform", names["transform"], bias=cfg.use_bias, body=False)
      self.norm("mlm.norm", names["norm"], bias=cfg.norm_bias and cfg.norm_type != "rmsnorm",
                body=False)
    if cfg.decoder_bias:
      self.add("mlm.bias", names["bias"], Same(), body=False)
    if not cfg.tie_word_embeddings:
      self.linear("mlm.decoder", names["decoder"], bias=False, body=False)

  def task_head(self, cfg, *, output: str, transform: str | None = None,
                norm: str | None = None) -> None:
    """The fine-tuning head (HF keys are top-level). ``transform``/``norm`` name the dense and
    norm before the output layer, when the config has them."""
    if transform is not None and (cfg.classifier_transform == "all" or
                                  (cfg.classifier_transform == "sequence"
                                   and cfg.task_head == "classifier")):
      self.linear("task.transform", transform, bias=cfg.classifier_bias, body=False)
      if norm is not None and cfg.classifier_norm:
        self.norm("task.norm", norm, bias=cfg.norm_bias and cfg.norm_type != "rmsnorm",
                  body=False)
    self.linear("task.output", output, body=False)
