"""Fine-tuning a task head (every ``HeadTask``): a pretrained body + a fresh head, trained on the
run scaffold and the shared engine (the same jitted step, optimizer, Orbax checkpoints and
metric writers as pretraining).

Per seed: train for ``train.epochs``, evaluate on the dev split every epoch (or
``train.eval_every`` steps), keep the best dev checkpoint as the run's model folder, stop
early after ``train.early_stopping_patience`` evaluations without improvement, then score the
best model on the test split. Several seeds -> one sub-run each and the median in
``summary.json``. What the task is (reading, arrays, loss, metrics) is its type's
(``tasks/types/``); the starting point is ``start.py``.
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
from bertjax.model_dir import check_vocab, load_model_dir, save_model_dir
from bertjax.models import Model
from bertjax.objectives.finetune import TaskObjective
from bertjax.tasks.data import SplitData, encode, load_split, task_buckets, train_iterator
from bertjax.tasks.formats import check_labels, infer_labels, read_split, split_source
from bertjax.tasks.predictor import Predictor
from bertjax.tasks.seeds import BestDev, run_seeds
from bertjax.tasks.start import StartPoint, load_start, task_model_config
from bertjax.train.engine import build_engine, run_steps
from bertjax.train.optim import make_optimizer, schedule
from bertjax.train.run import open_run, plan_mesh
from bertjax.train.run_dir import check_run_dir_path, write_text_atomic


def finetune_head(cfg: FinetuneConfig, task, *, devices=None, quiet: bool = False,
                  stop_event: threading.Event | None = None,
                  allow_config_change: bool = False) -> dict:
  """``tasks.finetune.finetune`` for a ``HeadTask``: the data, labels, starting model and mesh
  are all checked before the run folder is touched."""
  run_dir = storage.absolute(cfg.run_dir)
  check_run_dir_path(run_dir)
  start = load_start(cfg)
  train_examples = read_split("train", task, cfg.data)
  labels = infer_labels(train_examples, task, cfg.data.labels)
  model_cfg = task_model_config(start.config, cfg, task, labels)
  check_vocab(model_cfg.vocab_size, start.tokenizer.vocab_size, f"init_from={cfg.init_from}",
              "set data.tokenizer to the model's tokenizer")
  check_labels(train_examples, task, labels, "train")
  splits = {"train": encode(train_examples, "train", cfg, task, start.tokenizer, labels)}
  for name in ("validation", "test"):
    if split_source(name, cfg.data):
      splits[name] = load_split(name, cfg, task, start.tokenizer, labels)
  start = start.for_model(model_cfg)
  mesh = plan_mesh(cfg.mesh, devices, train_batch_size=cfg.train.batch_size,
                   train_eval_batch_size=cfg.train.eval_batch_size)

  train_one = lambda seed, seed_dir: _train_one(cfg, task, seed, seed_dir, mesh, model_cfg,
                                                start, splits, quiet=quiet,
                                                stop_event=stop_event)
  return run_seeds(cfg, task, run_dir, train_one, extra={"labels": list(labels)},
                   allow_config_change=allow_config_change)


def _train_one(cfg: FinetuneConfig, task, seed: int, run_dir: Path, mesh, model_cfg: ModelConfig,
               start: StartPoint, splits: dict[str, SplitData], *, quiet, stop_event) -> dict:
  train, dev, test = splits["train"], splits.get("validation"), splits.get("test")
  tc = cfg.train
  steps_per_epoch = max(1, len(train) // tc.batch_size)
  steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
  eval_every = tc.eval_every or steps_per_epoch
  # made for the traced total step count: every seed and run length shares one compile
  tx = functools.partial(make_optimizer, cfg.optim, num_blocks=model_cfg.num_blocks)
  lr = lambda step, total: schedule(cfg.optim, total)(step)
  model_dir = run_dir / layout.MODEL
  objective = TaskObjective(task)
  buckets = task_buckets(cfg, train.lengths)
  batches = train_iterator(train.arrays, tc.batch_size, seed, buckets=buckets,
                           per_token=task.per_token_keys, group=cfg.data.group_by_length)
  example = {k: v[:tc.batch_size] for k, v in train.arrays.items()}

  with open_run(run_dir, mesh, cfg.mesh, cfg.checkpoint, quiet=quiet,
                label=f"finetune seed {seed}", stop_event=stop_event) as run:
    make = lambda: Model(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_params = sharding.abstract_model(make)
    engine = build_engine(graphdef, abstract_params, objective, tx, seed=seed, total_steps=steps,
                          example_batch=example, grad_accum_steps=tc.grad_accum_steps,
                          lr_schedule=lr, max_skips=tc.max_skips)
    predictor = Predictor(engine.graphdef, tc.eval_batch_size, example, buckets=buckets,
                          per_token=task.per_token)
    step = run.restore(engine, batches)
    if step is None:  # the pretrained body; the head (and a new pooler) stay fresh
      engine.init(make, values=start.values(engine))
    step = step or 0
    save = lambda: save_model_dir(model_dir, engine.model(), start.tokenizer, overwrite=True)
    best = BestDev(cfg, task, run_dir, run, save)

    def evaluate(step: int) -> bool:
      """Score dev; keep the best model folder; True = stop (patience exhausted)."""
      metrics, _ = task.evaluate(dev, predictor(engine.state.params, dev.arrays), cfg,
                                 model_cfg.label_names, tune_threshold=cfg.qa.tune_null_threshold)
      return best.record(step, metrics)

    began = time.perf_counter()
    result = run_steps(engine, batches, run, start=step, steps=steps, log_every=tc.log_every,
                       eval_every=eval_every, evaluate=evaluate if dev is not None else None,
                       data_iterator=batches,
                       tokens_per_step=tc.batch_size * cfg.data.max_seq_length)
    train_seconds = time.perf_counter() - began  # includes compilation and dev evaluations
    if result.preempted:
      return {"preempted": True, "step": result.step}
    if dev is not None and best.best.get("step") != result.step and not result.stopped_early:
      evaluate(result.step)  # the final state competes for best too
    if dev is None:
      save()
    out = {"steps": result.step, "train_seconds": train_seconds, "train": result.train,
           "model": str(model_dir)}
    if dev is not None:
      out.update(dev=best.best["metrics"], best_step=best.best["step"])
    if test is not None:
      best_model, _ = load_model_dir(model_dir)
      threshold = out.get("dev", {}).get("null_threshold")
      test_metrics, _ = task.evaluate(test, predictor(nnx.state(best_model), test.arrays), cfg,
                                      model_cfg.label_names, threshold=threshold)
      run.writer.write(result.step, test_metrics, prefix="test")
      out["test"] = test_metrics
  if jax.process_index() == 0:
    write_text_atomic(run_dir / layout.RESULT, json.dumps(out, indent=2) + "\n")
  return out


