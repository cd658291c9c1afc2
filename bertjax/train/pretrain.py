"""``pretrain(cfg)``: data -> sharded model -> jitted step loop -> eval, metrics, checkpoints.

Pretraining data and objectives on the run scaffold (train/run.py) and the shared engine
(train/engine.py), which fine-tuning uses as well: one jitted step, metrics read one step late,
Orbax checkpoints, SIGTERM saves.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from bertjax import sharding, storage
from bertjax.config import ConfigError, ExperimentConfig, to_dict
from bertjax.data.corpus import load_corpus
from bertjax.data.pipeline import make_dataset, masking_spec
from bertjax.data.tokenizer import Tokenizer
from bertjax.model_dir import (check_vocab, read_model_config, read_param_shapes,
                               resolve_model_dir, restore_params, save_model_dir)
from bertjax.models import Model
from bertjax.objectives import check_objective, make_objective
from bertjax.objectives.distill import student_config, student_from_teacher
from bertjax.params import flat_shapes, leaf_name, with_values
from bertjax.train.engine import build_engine, run_steps, to_host
from bertjax.train.flops import peak_flops, step_flops_per_token
from bertjax.train.optim import make_optimizer, schedule
from bertjax.train.run import open_run, plan_mesh
from bertjax.train.run_dir import check_run_dir_path, claim_run_dir, write_status

# Config keys a resumed run may change without changing what it trains.
RESUMABLE = ("name", "run_dir", "train.steps", "train.eval_every", "train.eval_batches",
             "train.log_every", "train.peak_flops_per_device", "train.on_nonfinite",
             "train.max_consecutive_skips", "checkpoint", "mesh", "data.num_workers",
             "model.scan_layers", "model.remat", "model.remat_names")  # how, not what


def _resolve_model(cfg: ExperimentConfig, tokenizer) -> ExperimentConfig:
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


def pretrain(cfg: ExperimentConfig, *, devices=None, stop_event: threading.Event | None = None,
             on_step=None, quiet: bool = False, allow_config_change: bool = False) -> dict:
  """Run (or resume) pretraining; returns a summary dict.

  Everything is checked before the run folder is touched (config, data, mesh and batch split,
  the starting parameters); a resumed run must keep its config except for ``RESUMABLE`` keys
  unless ``allow_config_change``. ``stop_event`` (set by SIGTERM too) stops after the current
  step with a checkpoint; ``on_step(step)`` is called after every dispatched step (hooks)."""
  run_dir = storage.absolute(cfg.run_dir)
  check_run_dir_path(run_dir)
  if cfg.objective == "distill":
    cfg = _distillation_config(cfg)
  corpus = load_corpus(cfg.data)
  cfg = _resolve_model(cfg, corpus.tokenizer)
  # a prepared folder's ids come from its own tokenizer: they must fit the table too
  check_vocab(cfg.model.vocab_size, len(corpus.unigram), f"data.source={cfg.data.source}",
              "the data was tokenized with a larger vocabulary than data.tokenizer")
  check_objective(cfg)
  mesh = plan_mesh(cfg.mesh, devices, train_batch_size=cfg.train.batch_size)
  if cfg.train.init_from:
    _check_init_from(cfg)
  local_bs = cfg.train.batch_size // jax.process_count()
  spec = masking_spec(cfg.data, corpus.tokenizer)
  pad = corpus.tokenizer.pad_id
  sbo = dict(sbo_max_targets=cfg.model.sbo_max_targets, unigram=corpus.unigram)
  train_iter = iter(make_dataset(corpus.train, spec, cfg.data, local_batch_size=local_bs,
                                 pad_id=pad, shuffle=True, **sbo))
  eval_count = min(cfg.train.eval_batches, max(1, len(corpus.eval) // cfg.train.batch_size))
  eval_iter = iter(make_dataset(corpus.eval, spec, cfg.data, local_batch_size=local_bs, pad_id=pad,
                                shuffle=False, seed_offset=1, **sbo))
  eval_local = [next(eval_iter) for _ in range(eval_count)]

  with claim_run_dir(run_dir, to_dict(cfg), resumable=RESUMABLE,
                     allow_config_change=allow_config_change), \
       open_run(run_dir, mesh, cfg.mesh, cfg.checkpoint, quiet=quiet, stop_event=stop_event) as run:
    engine, teacher = _plan_engine(cfg, example_batch=eval_local[0])
    latest = run.restore(engine, train_iter)
    if latest is None:
      _init_state(cfg, engine, teacher)
    start = latest or 0
    objective = engine.objective

    eval_batches = [engine.batch(b) for b in eval_local]

    def evaluate() -> dict:
      sums = None
      for b in eval_batches:
        s = engine.eval_step(engine.state.params, b, engine.state.frozen)
        sums = s if sums is None else jax.tree.map(lambda a, c: a + c, sums, s)
      return objective.finalize(to_host(sums))

    tokens_per_step = cfg.train.batch_size * cfg.data.max_seq_length
    teacher_cfg = read_model_config(cfg.distill.teacher) if cfg.objective == "distill" else None
    flops_per_step = tokens_per_step * step_flops_per_token(cfg, teacher_cfg)
    peak = peak_flops(mesh, cfg.train.peak_flops_per_device)

    result = run_steps(
        engine, train_iter, run, start=start, steps=cfg.train.steps,
        log_every=cfg.train.log_every, eval_every=cfg.train.eval_every,
        evaluate=lambda step: _write_eval(run, step, evaluate()),
        data_iterator=train_iter, tokens_per_step=tokens_per_step,
        flops_per_step=flops_per_step, peak_flops=peak, on_step=on_step)
    checkpoints = str(run.checkpointer.directory)
    if result.preempted:
      write_status(run_dir, "preempted", step=result.step)
      return {"preempted": True, "step": result.step, "checkpoint": checkpoints}
    final_eval = evaluate()
    _write_eval(run, result.step, final_eval)
    baseline = _unigram_baseline(eval_local, corpus.unigram_token)
    baseline_loss = unigram_baseline_loss(eval_local, corpus.unigram)
    model_dir = _export_model(run_dir / "model", engine.graphdef, engine.state.params,
                              corpus.tokenizer)
    write_status(run_dir, "completed", step=result.step)

  return {"preempted": False, "step": result.step, "eval": final_eval, "train": result.train,
          "unigram_baseline_accuracy": baseline, "unigram_baseline_loss": baseline_loss,
          "checkpoint": checkpoints,
          "model": str(model_dir), "run_dir": str(run_dir)}


def _write_eval(run, step: int, metrics: dict) -> None:
  run.writer.write(step, metrics, prefix="eval")
  run.log(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


def _plan_engine(cfg: ExperimentConfig, example_batch: dict):
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


def _init_state(cfg: ExperimentConfig, engine, abstract_teacher) -> None:
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


def _distillation_config(cfg: ExperimentConfig) -> ExperimentConfig:
  """The student is a DistilBERT of the teacher's width; the teacher's tokenizer is the data's."""
  if not cfg.distill.teacher:
    raise ConfigError("objective=distill needs distill.teacher (a model folder with an MLM head)")
  teacher = read_model_config(cfg.distill.teacher)
  if "mlm" not in teacher.heads:
    raise ConfigError(f"distill.teacher={cfg.distill.teacher} has no MLM head")
  if not cfg.distill.layers or max(cfg.distill.layers) >= teacher.num_layers:
    raise ConfigError(f"distill.layers={list(cfg.distill.layers)} must index the teacher's "
                      f"{teacher.num_layers} layers")
  tokenizer = resolve_model_dir(cfg.distill.teacher) / "tokenizer"
  check_vocab(teacher.vocab_size, Tokenizer.from_dir(tokenizer).vocab_size,
              f"distill.teacher={cfg.distill.teacher}")
  return dataclasses.replace(cfg, model=student_config(teacher, cfg.distill.layers),
                             data=dataclasses.replace(cfg.data, tokenizer=str(tokenizer)))


def _check_init_from(cfg: ExperimentConfig) -> None:
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


def _unigram_baseline(eval_local: list[dict], token: int) -> float:
  """Held-out MLM accuracy of always predicting the most frequent training token."""
  hits = sum(float(((b["masked_ids"] == token) * b["masked_weights"]).sum()) for b in eval_local)
  count = sum(float(b["masked_weights"].sum()) for b in eval_local)
  return hits / max(count, 1.0)


def unigram_baseline_loss(eval_local: list[dict], unigram: np.ndarray) -> float:
  """Held-out MLM loss (nats) of a model that knows only the training tokens' frequencies
  (add-one smoothed): the loss a model that learns no context cannot go below."""
  logp = np.log((unigram + 1.0) / (unigram.sum() + len(unigram)))
  total = sum(float((-logp[b["masked_ids"]] * b["masked_weights"]).sum()) for b in eval_local)
  count = sum(float(b["masked_weights"].sum()) for b in eval_local)
  return total / max(count, 1.0)


def _export_model(dst: Path, graphdef, params, tokenizer) -> Path:
  """The trained model as a bertjax model folder (embed / fill-mask / export-hf read it)."""
  save_model_dir(dst, nnx.merge(graphdef, params), tokenizer, overwrite=True)
  return dst
