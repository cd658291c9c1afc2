"""Planning a pretraining run from its config: what ``pretrain`` runs and ``bertjax compile``
lowers are built here, by the same functions.

``resolve_model`` fits the model to the tokenizer and sequence length; ``distillation_config``
makes a distillation student of the teacher's width; ``check_init_from`` checks a starting point
on abstract models; ``plan_engine`` builds the sharded engine from shapes alone (the jitted
step, its shardings and donation); ``init_engine_state`` fills it for a fresh run.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx

from bertjax import layout, sharding
from bertjax.config import ConfigError, ExperimentConfig
from bertjax.data.tokenizer import Tokenizer
from bertjax.model_dir import (check_vocab, read_model_config, read_param_shapes,
                               resolve_model_dir, restore_params)
from bertjax.models import Model
from bertjax.objectives import make_objective
from bertjax.objectives.distill import student_config, student_from_teacher
from bertjax.params import flat_shapes, leaf_name, with_values
from bertjax.train.engine import build_engine
from bertjax.train.optim import make_optimizer, schedule


def resolve_model(cfg: ExperimentConfig, tokenizer) -> ExperimentConfig:
  """The tokenizer decides vocab and padding ids (a model.vocab_size that is the family's
  default or larger gives way to it; a smaller one is an error: its table could not hold the
  ids); the model must fit the sequence length."""
  check_vocab(cfg.model.vocab_size, tokenizer.vocab_size, f"data.tokenizer={cfg.data.tokenizer}",
              f"set model.vocab_size={tokenizer.vocab_size} (the tokenizer's)")
  model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size,
                              pad_token_id=tokenizer.pad_id)
  need = cfg.data.max_seq_length + model.position_offset
  if model.position_embedding == "absolute" and model.max_position_embeddings < need:
    raise ConfigError(f"model.max_position_embeddings={model.max_position_embeddings} is smaller "
                      f"than data.max_seq_length={cfg.data.max_seq_length} (+offset)")
  return dataclasses.replace(cfg, model=model)


def distillation_config(cfg: ExperimentConfig) -> ExperimentConfig:
  """The student is a DistilBERT of the teacher's width; the teacher's tokenizer is the data's."""
  if not cfg.distill.teacher:
    raise ConfigError("objective=distill needs distill.teacher (a model folder with an MLM head)")
  teacher = read_model_config(cfg.distill.teacher)
  if "mlm" not in teacher.heads:
    raise ConfigError(f"distill.teacher={cfg.distill.teacher} has no MLM head")
  if not cfg.distill.layers or max(cfg.distill.layers) >= teacher.num_layers:
    raise ConfigError(f"distill.layers={list(cfg.distill.layers)} must index the teacher's "
                      f"{teacher.num_layers} layers")
  tokenizer = resolve_model_dir(cfg.distill.teacher) / layout.TOKENIZER
  check_vocab(teacher.vocab_size, Tokenizer.from_dir(tokenizer).vocab_size,
              f"distill.teacher={cfg.distill.teacher}")
  return dataclasses.replace(cfg, model=student_config(teacher, cfg.distill.layers),
                             data=dataclasses.replace(cfg.data, tokenizer=str(tokenizer)))


def check_init_from(cfg: ExperimentConfig) -> None:
  """``train.init_from`` must hold this family with this run's parameter shapes (RoPE theta,
  lengths, dropout may differ): checked on abstract models, before anything is written."""
  source = read_model_config(cfg.train.init_from)
  if source.family != cfg.model.family:
    raise ConfigError(f"train.init_from={cfg.train.init_from} holds a {source.family} model, "
                      f"this run trains {cfg.model.family}")
  if source.vocab_size != cfg.model.vocab_size:
    raise ConfigError(f"train.init_from={cfg.train.init_from} has a vocabulary of "
                      f"{source.vocab_size} ids, this run's tokenizer {cfg.model.vocab_size}; "
                      f"set data.tokenizer={cfg.train.init_from}/tokenizer")
  ours = flat_shapes(nnx.eval_shape(lambda: Model(cfg.model, rngs=nnx.Rngs(0))))
  theirs = read_param_shapes(cfg.train.init_from)  # its metadata: readable, and these shapes
  differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
  if differ:
    raise ConfigError(f"train.init_from={cfg.train.init_from}: parameter shapes differ from "
                      f"model.* ({', '.join(differ[:3])}); only shape-preserving changes such "
                      "as rope_theta or lengths")


def plan_engine(cfg: ExperimentConfig, example_batch: dict):
  """The engine for ``cfg`` on the active mesh, from shapes alone (``bertjax compile`` lowers
  exactly this): -> (engine, the teacher's (folder, abstract params) or None)."""
  tx = functools.partial(make_optimizer, cfg.optim)  # for the traced total step count
  make = lambda: Model(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
  graphdef, abstract_params = sharding.abstract_model(make)
  teacher_graphdef = abstract_teacher = None
  if cfg.objective == "distill":  # the teacher: frozen, sharded like the student
    teacher_cfg = read_model_config(cfg.distill.teacher)
    teacher_graphdef, abstract_teacher = sharding.abstract_model(
        lambda: Model(teacher_cfg, rngs=nnx.Rngs(0)))
  engine = build_engine(graphdef, abstract_params, make_objective(cfg, teacher_graphdef), tx,
                        seed=cfg.train.seed, total_steps=cfg.train.steps,
                        example_batch=example_batch, grad_accum_steps=cfg.train.grad_accum_steps,
                        lr_schedule=lambda step, total: schedule(cfg.optim, total)(step),
                        abstract_frozen=abstract_teacher, max_skips=cfg.train.max_skips)
  return engine, abstract_teacher


def init_engine_state(cfg: ExperimentConfig, engine, abstract_teacher) -> None:
  """A fresh run's state, each source read straight into its sharded targets: the teacher's
  layers for a distillation student, ``train.init_from``, or a random init."""
  make = lambda: Model(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
  if cfg.objective == "distill":
    teacher = restore_params(cfg.distill.teacher, abstract_teacher)
    names = {leaf_name(p): v.get_value() for p, v in jax.tree_util.tree_flatten_with_path(
        teacher, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
    student_names = flat_shapes(nnx.eval_shape(make)).keys()
    student = with_values(engine.abstract.params,
                          student_from_teacher(names, cfg.distill.layers, student_names))
    engine.init_from(student, teacher, donate=False)  # the student's arrays are the teacher's
  elif cfg.train.init_from:
    engine.init_from(restore_params(cfg.train.init_from, engine.abstract.params))
  else:
    engine.init(make)
