"""The starting point of fine-tuning: a pretrained body (a bertjax model or run folder, or a
transformers folder imported on the fly) and the config of the same body with the task's head.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from bertjax import storage
from bertjax.config import (ConfigError, FinetuneConfig, ModelConfig, apply_overrides,
                            family_defaults, from_dict, to_dict)
from bertjax.data.tokenizer import Tokenizer, TokenizerError
from bertjax.interop.hf import load_hf
from bertjax.model_dir import read_model_config, read_param_shapes, read_tokenizer, restore_params
from bertjax.models import Model
from bertjax.params import flat_shapes, leaf_name

TASK_HEAD = {"classification": "classifier", "multi_label": "classifier",
             "regression": "classifier", "token_classification": "token_classifier", "qa": "qa"}
PROBLEM = {"classification": "single_label", "multi_label": "multi_label",
           "regression": "regression"}
_HEAD_FIELDS = ("classifier_pooling", "classifier_transform", "classifier_act", "classifier_norm",
                "classifier_bias", "classifier_dropout")


def load_pretrained(path: str) -> tuple[ModelConfig, dict, Tokenizer | None]:
  """A bertjax model/run folder, or a transformers folder (config.json) imported on the fly.

  A bertjax folder's parameters come back as ``jax.ShapeDtypeStruct``s read from its metadata:
  fine-tuning restores them later straight into the sharded train state (``restore_params``);
  a transformers folder's are host arrays (converted from its safetensors)."""
  p = storage.as_path(path)
  if (p / "config.json").exists() and not (p / "config.yaml").exists():
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


def load_start(cfg: FinetuneConfig) -> tuple[ModelConfig, dict, Tokenizer]:
  """``load_pretrained(cfg.init_from)`` with the tokenizer a run uses: ``data.tokenizer`` if
  set, else the starting checkpoint's (one it lacks is a one-line error)."""
  source_cfg, source_params, tokenizer = load_pretrained(cfg.init_from)
  if cfg.data.tokenizer:
    tokenizer = Tokenizer.from_dir(cfg.data.tokenizer)
  if tokenizer is None:
    raise ConfigError(f"init_from={cfg.init_from} has no tokenizer; set data.tokenizer")
  return source_cfg, source_params, tokenizer


def task_model_config(source: ModelConfig, cfg: FinetuneConfig,
                      labels: tuple[str, ...]) -> ModelConfig:
  """The source body with the task's head. A source without this head gets the family's
  head defaults (its config may predate them); ``model_overrides`` apply last."""
  head = TASK_HEAD[cfg.task]
  fields = to_dict(source)
  if source.task_head != head:
    defaults = {**to_dict(ModelConfig()), **family_defaults(source.family)}
    fields.update({k: defaults[k] for k in _HEAD_FIELDS})
  num_labels = 2 if cfg.task == "qa" else 1 if cfg.task == "regression" else len(labels)
  fields.update(heads=[head], num_labels=num_labels, labels=list(labels),
                problem_type=PROBLEM.get(cfg.task, "single_label"),
                generator_width_fraction=0.0,
                sentence_pooling="", sentence_normalize=False)  # a task model, not an encoder
  if head == "classifier" and fields["classifier_pooling"] == "pooler":
    fields["pooler"] = True  # a body saved without its pooler gets a fresh one (as transformers)
  model_cfg = from_dict(ModelConfig, fields, prefix="model")
  model_cfg = apply_overrides(model_cfg, list(cfg.model_overrides))
  need = cfg.data.max_seq_length + model_cfg.position_offset
  if model_cfg.position_embedding == "absolute" and model_cfg.max_position_embeddings < need:
    raise ConfigError(f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
                      f"{model_cfg.max_position_embeddings - model_cfg.position_offset} positions")
  return model_cfg


def initial_params(model_cfg: ModelConfig, source: dict[str, np.ndarray],
                   init_from: str) -> dict[str, np.ndarray]:
  """The source parameters this model takes: the whole body (a pooler may be new) and the task
  head when the source already has one of the same shape."""
  shapes = flat_shapes(nnx.eval_shape(lambda: Model(model_cfg, rngs=nnx.Rngs(0))))
  out, missing = {}, []
  for name, shape in shapes.items():
    value = source.get(name)
    if value is not None and tuple(value.shape) == tuple(shape):
      out[name] = value
    elif name.startswith("encoder.") and not name.startswith("encoder.pooler."):
      missing.append(name if value is None else f"{name} {tuple(value.shape)}!={tuple(shape)}")
  if missing:
    raise ConfigError(f"init_from={init_from} does not provide the body's parameters: "
                      f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
  return out


def pretrained_values(init_from: str, params: dict, engine) -> dict:
  """The starting parameters by name: a bertjax folder's read straight into the engine's
  sharded layout (each process its own shards); a transformers folder's host arrays as they
  are."""
  if not any(isinstance(v, jax.ShapeDtypeStruct) for v in params.values()):
    return params
  state = restore_params(init_from, engine.abstract.params, only=set(params))
  leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return {leaf_name(p): v.get_value() for p, v in leaves if leaf_name(p) in params}
