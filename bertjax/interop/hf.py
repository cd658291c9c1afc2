"""Hugging Face transformers folders (config.json + safetensors / pytorch_model.bin) <-> a
bertjax config and parameters: ``load_hf`` reads one, ``save_hf`` writes a model as one.

Import is strict: every bertjax parameter must be found with the right shape and every HF
weight must be used, except known non-weights (position-id buffers, optimizer slots, tied
duplicates). Anything else is one error that lists the keys -- never a silent partial load.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx

from bertjax import storage
from bertjax.config import ConfigError, ModelConfig, family_defaults, from_dict
from bertjax.errors import UserError
from bertjax.interop.adapter import task_config_from_hf, task_config_to_hf
from bertjax.interop.names import Part
from bertjax.interop.registry import adapter_for_model_type, get_adapter
from bertjax.interop.sentence_transformers import read_modules, write_modules
from bertjax.models import Model
from bertjax.params import flat_params, flat_shapes

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json")

# Checkpoint entries that are not model weights.
_IGNORED = re.compile(r"(^|[./])(position_ids|global_step|adam_[mv]|AdamWeightDecayOptimizer"
                      r"[^.]*|bad_steps|good_steps|loss_scale)($|[./])")


class HFImportError(UserError):
  """A checkpoint that does not match its config; the message lists the offending keys."""


def _listing(keys: list[str], limit: int = 3) -> str:
  shown = ", ".join(keys[:limit])
  return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def _layer_count(keys) -> int | None:
  """Layers the weights hold, from the ``layer.N.`` / ``layers.N.`` indices in their names."""
  found = [int(m.group(1)) for k in keys if (m := _LAYER_INDEX.search(k))]
  return max(found) + 1 if found else None


def read_state_dict(src: Path) -> dict[str, np.ndarray]:
  """All tensors of a transformers folder as float32/int numpy arrays."""
  single = src / "model.safetensors"
  index = src / "model.safetensors.index.json"
  if single.exists() or index.exists():
    try:
      files = [single] if single.exists() else sorted(
          {src / f for f in json.loads(index.read_text())["weight_map"].values()})
    except (ValueError, KeyError, TypeError, AttributeError):
      raise HFImportError(f"{index}: not a safetensors index (a JSON object with a "
                          "'weight_map')") from None
    out = {}
    for f in files:
      out.update(_read_safetensors(f))
    return out
  pt = src / "pytorch_model.bin"
  if pt.exists():
    try:
      import torch
    except ImportError:
      raise HFImportError(f"{pt}: reading pytorch_model.bin needs torch "
                          "(pip install torch==2.13.0), or convert it to safetensors") from None
    try:
      state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a state dict
      raise HFImportError(f"{pt}: not a readable PyTorch state dict "
                          f"({(str(e).splitlines() or [type(e).__name__])[0][:160]})") from None
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  raise HFImportError(f"{src}: no model.safetensors, model.safetensors.index.json or "
                      "pytorch_model.bin")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  out = {}
  try:
    with safe_open(str(path), framework="flax") as f:  # the flax reader handles bf16 as well
      for k in f.keys():
        t = np.asarray(f.get_tensor(k))
        out[k] = t if t.dtype.kind in "iub" or t.dtype == np.float32 else t.astype(np.float32)
  except Exception as e:  # truncated or not safetensors at all: the reader's own error types
    raise HFImportError(f"{path}: not a readable safetensors file "
                        f"({(str(e).splitlines() or [type(e).__name__])[0][:160]})") from None
  return out


def normalize_key(key: str, prefix: str) -> str:
  """Legacy ``LayerNorm.gamma/beta`` -> ``weight/bias``; drop the family prefix (``bert.``)."""
  key = re.sub(r"\.gamma$", ".weight", key)
  key = re.sub(r"\.beta$", ".bias", key)
  if key.startswith(prefix + "."):
    key = key[len(prefix) + 1:]
  return key


def load_hf(src: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Read a transformers folder -> (bertjax ModelConfig, flat bertjax parameters). On object
  storage it is read from a local copy (safetensors maps local files)."""
  src = storage.local_copy(src)
  config_path = src / "config.json"
  if not config_path.exists():
    raise HFImportError(f"{src}: no config.json (is this a transformers model folder?)")
  try:
    hf_cfg = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise HFImportError(f"{config_path}: invalid JSON ({e})") from None
  if "model_type" not in hf_cfg:
    raise HFImportError(f"{config_path}: no model_type field")
  adapter = adapter_for_model_type(hf_cfg["model_type"])

  state: dict[str, np.ndarray] = {}
  for key, value in read_state_dict(src).items():
    if _IGNORED.search(key):
      continue
    norm = normalize_key(key, adapter.hf_prefix)
    if norm in state:
      raise HFImportError(f"{src}: weight {norm} appears twice (with and without prefix)")
    state[norm] = value

  fields = dict(family_defaults(adapter.family), **adapter.config_from_hf(hf_cfg))
  task = task_config_from_hf(hf_cfg)  # a *ForSequenceClassification etc. has only its task head
  fields["heads"] = tuple(h for h in ("mlm", "nsp", "sop", "rtd")
                          if h in adapter.head_keys and adapter.head_keys[h] in state)
  fields.update(task)
  fields["pooler"] = adapter.head_keys.get("pooler") in state
  fields.update(read_modules(src) or {})  # a sentence-transformers folder: its pooling
  word_key = adapter.weight_names(from_dict(ModelConfig, fields))["encoder.embeddings.word.embedding"].hf
  if adapter.decoder_key in state and fields["tie_word_embeddings"]:
    if word_key in state and np.array_equal(state[adapter.decoder_key], state[word_key]):
      del state[adapter.decoder_key]  # a saved copy of the tied weight
    else:
      fields["tie_word_embeddings"] = False
  if adapter.decoder_bias_key in state:
    # transformers' MLM forward adds decoder.bias; the head's own ``bias`` is tied to it, or
    # (untied checkpoints) a dead parameter. Keep the one the forward pass uses.
    bias_key = adapter.weight_names(from_dict(ModelConfig, fields))["mlm.bias"].hf
    state[bias_key] = state.pop(adapter.decoder_bias_key)
  try:
    cfg = from_dict(ModelConfig, fields)
  except ConfigError as e:
    raise HFImportError(f"{config_path}: {e}") from None

  table = adapter.weight_names(cfg)
  weight_layers = _layer_count(state)
  shapes = flat_shapes(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))))
  params, missing, mismatched, used = {}, [], [], set()
  for ours, shape in shapes.items():
    entry = table[ours]
    if entry.hf not in state:
      missing.append(entry.hf)
      continue
    value = state[entry.hf]
    used.add(entry.hf)  # a fused weight feeds several parameters
    try:
      params[ours] = entry.transform.to_ours(value, shape)
    except ValueError:
      mismatched.append(f"{entry.hf} {tuple(value.shape)}")
  state = {k: v for k, v in state.items() if k not in used}
  problems = []
  if missing:
    problems.append(f"missing keys: {_listing(sorted(missing))}")
  if state:
    problems.append(f"unexpected keys: {_listing(sorted(state))}")
  if mismatched:
    problems.append(f"shape mismatches: {_listing(mismatched)}")
  if problems:
    why = ""
    if weight_layers is not None and cfg.num_layers != weight_layers:
      why = (f"the weights hold {weight_layers} layers, config.json says "
             f"{cfg.num_layers}; ")
    raise HFImportError(f"{src} does not match its config.json ({cfg.family}): {why}"
                        + "; ".join(problems))
  return cfg, params


def save_hf(model: Model, dst: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
  """Write ``model`` as a transformers folder (config.json + model.safetensors [+ tokenizer])."""
  from safetensors.numpy import save_file

  cfg = model.config
  adapter = get_adapter(cfg.family)
  table = adapter.weight_names(cfg)
  architecture, keeps_pooler = adapter.architecture(cfg)
  prefixed = not architecture.endswith("Model")
  state, parts = {}, {}
  for ours, value in flat_params(model).items():
    if ours.startswith(("generator.", "generator_mlm.", "sbo.")):
      continue  # pretraining-only parts (ELECTRA's generator, SpanBERT's SBO) have no HF home
    if ours.startswith("encoder.pooler.") and not keeps_pooler:
      continue
    entry = table[ours]
    key = f"{adapter.hf_prefix}.{entry.hf}" if entry.body and prefixed else entry.hf
    array = entry.transform.to_hf(np.asarray(value, dtype=np.float32))
    if isinstance(entry.transform, Part):
      parts.setdefault(key, {})[entry.transform.index] = array
      continue
    state[key] = np.ascontiguousarray(array)
    if ours == "mlm.bias" and not cfg.tie_word_embeddings and adapter.decoder_bias_key:
      state[adapter.decoder_bias_key] = state[key]  # untied: transformers reads decoder.bias
  for key, pieces in parts.items():  # fused HF weights (ModernBERT Wqkv, Wi)
    state[key] = np.ascontiguousarray(np.concatenate([pieces[i] for i in sorted(pieces)], axis=0))
  hf_config = dict(adapter.config_to_hf(cfg), **task_config_to_hf(cfg),
                   model_type=adapter.hf_model_type,
                   architectures=[architecture])
  dst = storage.absolute(dst)
  dst.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:  # object storage: written here, then uploaded
    local = Path(scratch) if storage.is_url(dst) else dst
    save_file(state, str(local / "model.safetensors"), metadata={"format": "pt"})
    if local != dst:
      storage.copy_file(local / "model.safetensors", dst / "model.safetensors")
  if tokenizer_dir is not None:
    copy_tokenizer_files(storage.as_path(tokenizer_dir), dst)
  if cfg.sentence_pooling and cfg.task_head is None:  # a sentence encoder: an ST folder too
    write_modules(dst, cfg.hidden_size, cfg.sentence_pooling, cfg.sentence_normalize,
                  min(512, cfg.max_position_embeddings - cfg.position_offset))
  # config.json last: a folder without it is not a transformers folder to any reader
  storage.write_text(dst / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  return dst


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
  copied = []
  for name in TOKENIZER_FILES:
    if (src / name).exists():
      storage.copy_file(src / name, dst / name)
      copied.append(name)
  return copied
