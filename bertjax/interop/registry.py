"""Every family's Hugging Face adapter, by bertjax family name and by HF ``model_type``."""

from __future__ import annotations

from bertjax.config import ConfigError
from bertjax.interop import (albert, bert, distilbert, electra, eurobert, modernbert, roberta,
                             spanbert)
from bertjax.interop.adapter import HFAdapter

ADAPTERS: dict[str, HFAdapter] = {m.ADAPTER.family: m.ADAPTER for m in (
    bert, roberta, albert, distilbert, electra, spanbert, modernbert, eurobert)}


def get_adapter(family: str) -> HFAdapter:
  try:
    return ADAPTERS[family]
  except KeyError:
    raise ConfigError(f"unknown model.family {family!r}; known: {', '.join(sorted(ADAPTERS))}") \
        from None


def adapter_for_model_type(model_type: str) -> HFAdapter:
  """The adapter that imports an HF ``model_type`` (SpanBERT's checkpoints read as BERT)."""
  for adapter in ADAPTERS.values():
    if adapter.hf_model_type == model_type and adapter.family == adapter.hf_model_type:
      return adapter
  raise ConfigError(f"config.json model_type {model_type!r} is not supported; supported: "
                    f"{', '.join(sorted({a.hf_model_type for a in ADAPTERS.values()}))}")
