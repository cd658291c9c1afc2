"""The transformers side of parity tests: tiny random HF models with every weight perturbed."""

from __future__ import annotations

import numpy as np
import torch
import transformers as T
from flax import nnx

from bertjax.interop.hf import load_hf
from bertjax.models import Model
from bertjax.params import assign_flat_params


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """HF init leaves biases at 0 and norms at 1, which would hide swapped or dropped weights."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.1
      if "LayerNorm.weight" in name or "layer_norm.weight" in name or name.endswith("norm.weight"):
        p.copy_(1.0 + noise)
      else:
        p.copy_(noise)
  return model.eval()


def hf_model(cls_name: str, config, seed: int = 0):
  # The eager path is the reference: transformers' SDPA path for ModernBERT drops the sliding
  # window on local layers (0.46 max difference from eager on the tiny test config).
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  return randomize(getattr(T, cls_name)(config), seed)


def import_into_bertjax(hf, tmp_path):
  hf.save_pretrained(tmp_path)
  cfg, params = load_hf(tmp_path)
  return assign_flat_params(Model(cfg, rngs=nnx.Rngs(0)), params)


def run_hf(hf, ids, mask=None, types=None):
  kw = {"input_ids": torch.tensor(np.asarray(ids))}
  if mask is not None:
    kw["attention_mask"] = torch.tensor(np.asarray(mask, dtype=np.int64))
  if types is not None:
    kw["token_type_ids"] = torch.tensor(np.asarray(types))
  with torch.no_grad():
    return hf(**kw, output_hidden_states=True)


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
