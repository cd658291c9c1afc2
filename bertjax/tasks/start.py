"""The starting point of fine-tuning, resolved once (``load_start``): a pretrained body (a
bertjax model or run folder, or a transformers folder imported on the fly), the tokenizer the
run uses, and how its parameters get into the sharded train state. ``task_model_config`` gives
the config of the same body with a task type's head.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from bertjax import layout, storage
from bertjax.config import (ConfigError, FinetuneConfig, ModelConfig, apply_overrides,
                            family_defaults, from_dict, to_dict)
from bertjax.data.tokenizer import Tokenizer, TokenizerError
from bertjax.interop.hf import load_hf
from bertjax.model_dir import read_model_config, read_param_shapes, read_tokenizer, restore_params
from bertjax.models import Model
from bertjax.params import flat_shapes, leaf_name

_HEAD_FIELDS = ("classifier_pooling", "classifier_transform", "classifier_act", "classifier_norm",
                "classifier_bias", "classifier_dropout")


def load_pretrained(path: str) -> tuple[ModelConfig, dict, Tokenizer | None]:
  """A bertjax model/run folder, or a transformers folder (config.json) imported on the fly.

  A bertjax folder's parameters come back as ``jax.ShapeDtypeStruct``s read from its metadata:
  fine-tuning restores them later straight into the sharded train state (``restore_params``);
  a transformers folder's are host arrays (converted from its safetensors)."""
  p = storage.as_path(path)
  if (p / "config.json").exists() and not (p / layout.CONFIG).exists():
    cfg, params = load_hf(p)
    try:
      tokenizer = Tokenizer.from_dir(p)
    except TokenizerError:
      tokenizer = None
    return cfg, params, tokenizer
  if not storage.exists(p):
    raise ConfigError(f"init_from={path} does not exist")
  shapes = read_param_shapes(p)
  return (read_model_config(p), {k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()},
          read_tokenizer(p))


@dataclasses.dataclass(frozen=True)
class StartPoint:
  """Where fine-tuning starts: ``path`` (``init_from``), the body's ``config``, the run's
  ``tokenizer`` and the parameters by name -- a bertjax folder's as ``jax.ShapeDtypeStruct``s
  (``values`` restores them straight into the engine's sharded layout, each process its own
  shards), a transformers folder's as host arrays."""

  path: str
  config: ModelConfig
  params: dict
  tokenizer: Tokenizer

  def for_model(self, model_cfg: ModelConfig) -> StartPoint:
    """The parameters ``model_cfg`` takes: the whole body (a pooler may be new) and the task
    head when the source already has one of the same shape; a missing body parameter is an
    error."""
    shapes = flat_shapes(nnx.eval_shape(lambda: Model(model_cfg, rngs=nnx.Rngs(0))))
    out, missing = {}, []
    for name, shape in shapes.items():
      value = self.params.get(name)
      if value is not None and tuple(value.shape) == tuple(shape):
        out[name] = value
      elif name.startswith("encoder.") and not name.startswith("encoder.pooler."):
        missing.append(name if value is None else f"{name} {tuple(value.shape)}!={tuple(shape)}")
    if missing:
      raise ConfigError(f"init_from={self.path} does not provide the body's parameters: "
                        f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return dataclasses.replace(self, params=out)

  def values(self, engine) -> dict:
    """The starting parameters by name, placed for ``engine``'s sharded state."""
    if not any(isinstance(v, jax.ShapeDtypeStruct) for v in self.params.values()):
      return self.params
    state = restore_params(self.path, engine.abstract.params, only=set(self.params))
    leaves = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {leaf_name(p): v.get_value() for p, v in leaves if leaf_name(p) in self.params}


def load_start(cfg: FinetuneConfig) -> StartPoint:
  """``init_from`` read once, with the tokenizer a run uses: ``data.tokenizer`` if set, else the
  starting checkpoint's (one it lacks is a one-line error)."""
  source_cfg, source_params, tokenizer = load_pretrained(cfg.init_from)
  if cfg.data.tokenizer:
    tokenizer = Tokenizer.from_dir(cfg.data.tokenizer)
  if tokenizer is None:
    raise ConfigError(f"init_from={cfg.init_from} has no tokenizer; set data.tokenizer")
  return StartPoint(cfg.init_from, source_cfg, source_params, tokenizer)


def task_model_config(source: ModelConfig, cfg: FinetuneConfig, task,
                      labels: tuple[str, ...]) -> ModelConfig:
  """The source body with the head of ``task`` (a ``TaskType``). A source without this head
  gets the family's head defaults (its config may predate them); ``model_overrides`` apply
  last."""
  head = task.head
  fields = to_dict(source)
  if source.task_head != head:
    defaults = {**to_dict(ModelConfig()), **family_defaults(source.family)}
    fields.update({k: defaults[k] for k in _HEAD_FIELDS})
  fields.update(heads=[head], num_labels=task.num_labels(labels), labels=list(labels),
                problem_type=task.problem_type,
                generator_width_fraction=0.0,
                sentence_pooling="", sentence_normalize=False)  # a task model, not an encoder
  if head == "classifier" and fields["classifier_pooling"] == "pooler":
    fields["pooler"] = True  # a body saved without its pooler gets a fresh one (as transformers)
  model_cfg = from_dict(ModelConfig, fields, prefix="model")
  return with_overrides(model_cfg, cfg)


def with_overrides(model_cfg: ModelConfig, cfg: FinetuneConfig) -> ModelConfig:
  """``model_overrides`` applied; the model must hold ``data.max_seq_length`` positions."""
  model_cfg = apply_overrides(model_cfg, list(cfg.model_overrides))
  need = cfg.data.max_seq_length + model_cfg.position_offset
  if model_cfg.position_embedding == "absolute" and model_cfg.max_position_embeddings < need:
    raise ConfigError(f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
                      f"{model_cfg.max_position_embeddings - model_cfg.position_offset} positions")
  return model_cfg
