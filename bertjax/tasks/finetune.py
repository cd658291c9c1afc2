"""``finetune(cfg)``: a pretrained body + a fresh task head, trained on the run scaffold and the
shared engine (the same jitted step, optimizer, Orbax checkpoints and metric writers as
pretraining).

Per seed: train for ``train.epochs``, evaluate on the dev split every epoch (or
``train.eval_every`` steps), keep the best dev checkpoint as the run's model folder, stop
early after ``train.early_stopping_patience`` evaluations without improvement, then score the
best model on the test split. Several seeds -> one sub-run each and the median in
``summary.json``. The starting point is ``start.py``; serving a fine-tuned folder ``serve.py``.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from pathlib import Path

import jax
from flax import nnx

from bertjax import layout, sharding, storage
from bertjax.config import FinetuneConfig, ModelConfig
from bertjax.data.tokenizer import Tokenizer
from bertjax.model_dir import check_vocab, load_model_dir, save_model_dir
from bertjax.models import Model
from bertjax.objectives.finetune import TaskObjective
from bertjax.tasks.data import (SplitData, encode, evaluate_logits, load_split, per_token_keys,
                                per_token_logits, task_buckets, train_iterator)
from bertjax.tasks.embedding import finetune_embeddings
from bertjax.tasks.formats import check_labels, infer_labels, read_split, split_source
from bertjax.tasks.seeds import BestDev, run_seeds
from bertjax.tasks.serve import Predictor
from bertjax.tasks.start import (initial_params, load_start, pretrained_values,
                                 task_model_config)
from bertjax.train.engine import build_engine, run_steps
from bertjax.train.optim import make_optimizer, schedule
from bertjax.train.run import open_run, plan_mesh
from bertjax.train.run_dir import check_run_dir_path, write_text_atomic



def finetune(cfg: FinetuneConfig, *, devices=None, quiet: bool = False,
             stop_event: threading.Event | None = None, allow_config_change: bool = False) -> dict:
  """Fine-tune once per seed; returns (and writes to ``run_dir/summary.json``) the per-seed
  dev/test metrics and their medians. Everything (data, labels, the starting model, the mesh)
  is checked before the run folder is touched; resuming follows ``run_dir.claim_run_dir``.
  ``task: sentence_embedding`` trains contrastively (``tasks/embedding.py``)."""
  if cfg.task == "sentence_embedding":
    return finetune_embeddings(cfg, devices=devices, quiet=quiet, stop_event=stop_event,
                               allow_config_change=allow_config_change)
  run_dir = storage.absolute(cfg.run_dir)
  check_run_dir_path(run_dir)
  source_cfg, source_params, tokenizer = load_start(cfg)
  train_examples = read_split("train", cfg.task, cfg.data)
  labels = infer_labels(train_examples, cfg.task, cfg.data.labels)
  model_cfg = task_model_config(source_cfg, cfg, labels)
  check_vocab(model_cfg.vocab_size, tokenizer.vocab_size, f"init_from={cfg.init_from}",
              "set data.tokenizer to the model's tokenizer")
  check_labels(train_examples, cfg.task, labels, "train")
  train = encode(train_examples, "train", cfg, tokenizer, labels)
  dev = load_split("validation", cfg, tokenizer, labels) if split_source("validation", cfg.data) else None
  test = load_split("test", cfg, tokenizer, labels) if split_source("test", cfg.data) else None
  params = initial_params(model_cfg, source_params, cfg.init_from)
  del source_params
  mesh = plan_mesh(cfg.mesh, devices, train_batch_size=cfg.train.batch_size,
                   train_eval_batch_size=cfg.train.eval_batch_size)

  train_one = lambda seed, seed_dir: _train_one(cfg, seed, seed_dir, mesh, model_cfg, params,
                                                tokenizer, train, dev, test, quiet=quiet,
                                                stop_event=stop_event)
  return run_seeds(cfg, run_dir, train_one, extra={"labels": list(labels)},
                   allow_config_change=allow_config_change)


def _train_one(cfg: FinetuneConfig, seed: int, run_dir: Path, mesh, model_cfg: ModelConfig,
               params: dict, tokenizer: Tokenizer, train: SplitData, dev: SplitData | None,
               test: SplitData | None, *, quiet, stop_event) -> dict:
  tc = cfg.train
  steps_per_epoch = max(1, len(train) // tc.batch_size)
  steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
  eval_every = tc.eval_every or steps_per_epoch
  # made for the traced total step count: every seed and run length shares one compile
  tx = functools.partial(make_optimizer, cfg.optim, num_blocks=model_cfg.num_blocks)
  lr = lambda step, total: schedule(cfg.optim, total)(step)
  model_dir = run_dir / layout.MODEL
  objective = TaskObjective(cfg.task)
  buckets, per_token = task_buckets(cfg, train.lengths), per_token_keys(cfg.task)
  batches = train_iterator(train.arrays, tc.batch_size, seed, buckets=buckets,
                           per_token=per_token, group=cfg.data.group_by_length)
  example = {k: v[:tc.batch_size] for k, v in train.arrays.items()}

  with open_run(run_dir, mesh, cfg.mesh, cfg.checkpoint, quiet=quiet,
                label=f"finetune seed {seed}", stop_event=stop_event) as run:
    make = lambda: Model(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_params = sharding.abstract_model(make)
    engine = build_engine(graphdef, abstract_params, objective, tx, seed=seed, total_steps=steps,
                          example_batch=example, grad_accum_steps=tc.grad_accum_steps,
                          lr_schedule=lr, max_skips=tc.max_skips)
    predictor = Predictor(engine.graphdef, tc.eval_batch_size, example, buckets=buckets,
                          per_token=per_token_logits(cfg.task))
    start = run.restore(engine, batches)
    if start is None:  # the pretrained body; the head (and a new pooler) stay fresh
      engine.init(make, values=pretrained_values(cfg.init_from, params, engine))
    start = start or 0
    best = BestDev(cfg, run_dir, run,
                   lambda: save_model_dir(model_dir, engine.model(), tokenizer, overwrite=True))

    def evaluate(step: int) -> bool:
      """Score dev; keep the best model folder; True = stop (patience exhausted)."""
      metrics, _ = evaluate_logits(dev, predictor(engine.state.params, dev.arrays), cfg,
                                   model_cfg.label_names,
                                   tune_threshold=cfg.qa.tune_null_threshold)
      return best.record(step, metrics)

    began = time.perf_counter()
    result = run_steps(engine, batches, run, start=start, steps=steps, log_every=tc.log_every,
                       eval_every=eval_every, evaluate=evaluate if dev is not None else None,
                       data_iterator=batches,
                       tokens_per_step=tc.batch_size * cfg.data.max_seq_length)
    train_seconds = time.perf_counter() - began  # includes compilation and dev evaluations
    if result.preempted:
      return {"preempted": True, "step": result.step}
    if dev is not None and best.best.get("step") != result.step and not result.stopped_early:
      evaluate(result.step)  # the final state competes for best too
    if dev is None:
      save_model_dir(model_dir, engine.model(), tokenizer, overwrite=True)
    out = {"steps": result.step, "train_seconds": train_seconds, "train": result.train,
           "model": str(model_dir)}
    if dev is not None:
      out.update(dev=best.best["metrics"], best_step=best.best["step"])
    if test is not None:
      best_model, _ = load_model_dir(model_dir)
      threshold = out.get("dev", {}).get("null_threshold")
      test_metrics, _ = evaluate_logits(
          test, predictor(nnx.state(best_model), test.arrays), cfg, model_cfg.label_names,
          threshold=threshold)
      run.writer.write(result.step, test_metrics, prefix="test")
      out["test"] = test_metrics
  if jax.process_index() == 0:
    write_text_atomic(run_dir / "result.json", json.dumps(out, indent=2) + "\n")
  return out


