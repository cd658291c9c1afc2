"""Hugging Face checkpoints in and out, for every family.

``import_hf(src, dst)``: a transformers folder -> a bertjax model folder (config, parameters,
tokenizer); ``export_hf(src, dst)``: a bertjax model or run folder -> a transformers folder.
``load_hf`` / ``save_hf`` do the same between a transformers folder and an in-memory model;
each family's names and config mapping live in ``interop/<family>.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from flax import nnx

from bertjax import storage
from bertjax.config import ModelConfig
from bertjax.data.tokenizer import Tokenizer, TokenizerError
from bertjax.interop.hf import HFImportError, load_hf, save_hf
from bertjax.interop.registry import get_adapter
from bertjax.model_dir import load_model_dir, resolve_model_dir, save_model_dir
from bertjax.models import Model
from bertjax.params import assign_flat_params

__all__ = ["HFImportError", "export_hf", "get_adapter", "import_hf", "load_hf", "save_hf"]


def import_hf(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> ModelConfig:
  """A transformers folder -> a bertjax model folder; returns the imported model's config.
  A folder without a usable tokenizer is imported without one (with a warning)."""
  if storage.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} already exists; choose another folder or pass --overwrite")
  cfg, params = load_hf(src)
  model = assign_flat_params(Model(cfg, rngs=nnx.Rngs(0)), params)
  try:
    tokenizer = Tokenizer.from_dir(src)
  except TokenizerError as e:
    warnings.warn(f"no usable tokenizer in {src} ({e}); saving the model without one",
                  stacklevel=2)
    tokenizer = None
  save_model_dir(dst, model, tokenizer, overwrite=overwrite)
  return cfg


def export_hf(src: str | Path, dst: str | Path) -> Path:
  """A bertjax model folder (or a run folder's ``model/``) -> a transformers folder, with its
  tokenizer files when it has them."""
  model, _ = load_model_dir(src)
  tokenizer_dir = resolve_model_dir(src) / "tokenizer"
  return save_hf(model, dst, tokenizer_dir if tokenizer_dir.is_dir() else None)
