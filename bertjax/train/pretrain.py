"""``pretrain(cfg)``: data -> sharded model -> jitted step loop -> eval, metrics, checkpoints.

Pretraining data and objectives on the run scaffold (train/run.py) and the shared engine
(train/engine.py), which fine-tuning uses as well: one jitted step, metrics read one step late,
Orbax checkpoints, SIGTERM saves.
"""

from __future__ import annotations

import threading
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from bertjax import layout, storage
from bertjax.config import ExperimentConfig, to_dict
from bertjax.data.corpus import load_corpus
from bertjax.data.pipeline import make_dataset, masking_spec
from bertjax.model_dir import check_vocab, read_model_config, save_model_dir
from bertjax.objectives import check_objective
from bertjax.train.engine import run_steps, to_host
from bertjax.train.flops import peak_flops, step_flops_per_token
from bertjax.train.planning import (check_init_from, distillation_config, init_engine_state,
                                    plan_engine, resolve_model)
from bertjax.train.run import open_run, plan_mesh
from bertjax.train.run_dir import check_run_dir_path, claim_run_dir, write_status

# Config keys a resumed run may change without changing what it trains.
RESUMABLE = ("name", "run_dir", "train.steps", "train.eval_every", "train.eval_batches",
             "train.log_every", "train.peak_flops_per_device", "train.on_nonfinite",
             "train.max_consecutive_skips", "checkpoint", "mesh", "data.num_workers",
             "model.scan_layers", "model.remat", "model.remat_names")  # how, not what


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
    cfg = distillation_config(cfg)
  corpus = load_corpus(cfg.data)
  cfg = resolve_model(cfg, corpus.tokenizer)
  # a prepared folder's ids come from its own tokenizer: they must fit the table too
  check_vocab(cfg.model.vocab_size, len(corpus.unigram), f"data.source={cfg.data.source}",
              "the data was tokenized with a larger vocabulary than data.tokenizer")
  check_objective(cfg)
  mesh = plan_mesh(cfg.mesh, devices, train_batch_size=cfg.train.batch_size)
  if cfg.train.init_from:
    check_init_from(cfg)
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
    engine, teacher = plan_engine(cfg, example_batch=eval_local[0])
    latest = run.restore(engine, train_iter)
    if latest is None:
      init_engine_state(cfg, engine, teacher)
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
    model_dir = _export_model(run_dir / layout.MODEL, engine.graphdef, engine.state.params,
                              corpus.tokenizer)
    write_status(run_dir, "completed", step=result.step)

  return {"preempted": False, "step": result.step, "eval": final_eval, "train": result.train,
          "unigram_baseline_accuracy": baseline, "unigram_baseline_loss": baseline_loss,
          "checkpoint": checkpoints,
          "model": str(model_dir), "run_dir": str(run_dir)}


def _write_eval(run, step: int, metrics: dict) -> None:
  run.writer.write(step, metrics, prefix="eval")
  run.log(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


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
