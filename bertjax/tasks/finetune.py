"""``finetune(cfg)``: a pretrained body + a fresh task head, trained on the shared engine (the
same jitted step, optimizer, Orbax checkpoints and metric writers as pretraining).

Per seed: train for ``train.epochs``, evaluate on the dev split every epoch (or
``train.eval_every`` steps), keep the best dev checkpoint as the run's model folder, stop
early after ``train.early_stopping_patience`` evaluations without improvement, then score the
best model on the test split. Several seeds -> one sub-run each and the median in
``summary.json``. ``evaluate_model`` / ``predict_model`` serve a fine-tuned folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import threading
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import sharding
from bertjax.checkpoint import (load_model_dir, read_model_config, read_model_params,
                                read_tokenizer, resolve_model_dir, save_model_dir)
from bertjax.config import ConfigError, ModelConfig, apply_overrides, from_dict, to_dict
from bertjax.data.pipeline import EpochSampler
from bertjax.data.tokenizer import Tokenizer
from bertjax.models import Model, family_defaults
from bertjax.objectives.finetune import TaskObjective
from bertjax.params import assign_flat_params, flat_shapes
from bertjax.tasks.config import FinetuneConfig
from bertjax.tasks.data import MODEL_INPUTS, SplitData, encode, evaluate_logits, load_split
from bertjax.tasks.formats import check_labels, infer_labels, read_split
from bertjax.train.checkpoints import Checkpointer
from bertjax.train.engine import build_engine, run_steps
from bertjax.train.metrics import MetricWriter, Progress
from bertjax.train.optim import make_optimizer, schedule

TASK_HEAD = {"classification": "classifier", "multi_label": "classifier",
             "regression": "classifier", "token_classification": "token_classifier", "qa": "qa"}
PROBLEM = {"classification": "single_label", "multi_label": "multi_label",
           "regression": "regression"}
_HEAD_FIELDS = ("classifier_pooling", "classifier_transform", "classifier_act", "classifier_norm",
                "classifier_bias", "classifier_dropout")


# -- the starting point ------------------------------------------------------------------------


def load_pretrained(path: str) -> tuple[ModelConfig, dict[str, np.ndarray], Tokenizer | None]:
  """A bertjax model/run folder, or a transformers folder (config.json) imported on the fly."""
  p = Path(path)
  if (p / "config.json").exists() and not (p / "config.yaml").exists():
    from bertjax.data.tokenizer import TokenizerError
    from bertjax.interop.hf import load_hf

    cfg, params = load_hf(p)
    try:
      tokenizer = Tokenizer.from_dir(p)
    except TokenizerError:
      tokenizer = None
    return cfg, params, tokenizer
  if not p.exists():
    raise ConfigError(f"init_from={path} does not exist")
  return read_model_config(p), read_model_params(p), read_tokenizer(p)


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
                problem_type=PROBLEM.get(cfg.task, "single_label"), generator_hidden_size=0.0)
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


# -- prediction ----------------------------------------------------------------------------------


class Predictor:
  """Jitted ``params, inputs -> task logits`` over padded global batches (rows split over
  processes like training batches); logits come back replicated, whole, on every host."""

  def __init__(self, graphdef, mesh, rules, batch_size: int, example: dict):
    self.batch_size = batch_size
    self.mesh = mesh
    self.in_sh = {k: sharding.batch_sharding(mesh, rules, ndim=example[k].ndim)
                  for k in MODEL_INPUTS}

    def logits(params, batch):
      model = nnx.merge(graphdef, params)
      return model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                   padding_mask=batch["padding_mask"]).task_logits

    self.fn = jax.jit(logits, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, params, arrays: dict[str, np.ndarray]) -> np.ndarray:
    from bertjax.data.pipeline import global_batch

    n, b = len(arrays["input_ids"]), self.batch_size
    procs, pid = jax.process_count(), jax.process_index()
    local = b // procs
    out = []
    for start in range(0, n, b):
      rows = {k: arrays[k][start:start + b] for k in MODEL_INPUTS}
      short = b - len(rows["input_ids"])
      if short:  # pad the last batch with copies of row 0 (dropped below)
        rows = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in rows.items()}
      mine = {k: v[pid * local:(pid + 1) * local] for k, v in rows.items()}
      out.append(np.asarray(self.fn(params, global_batch(mine, self.in_sh)))[:b - short])
    return np.concatenate(out).astype(np.float32)


# -- training ------------------------------------------------------------------------------------


class _TaskDataset:
  """(epoch, index) -> one training row; picklable for grain."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __call__(self, item):
    return {k: v[item[1]] for k, v in self.arrays.items()}


def train_iterator(arrays: dict[str, np.ndarray], batch_size: int, seed: int):
  """Epoch-shuffled batches of this process's rows (grain; the state goes into checkpoints)."""
  import grain

  local = batch_size // jax.process_count()
  sampler = EpochSampler(len(arrays["input_ids"]), seed, shuffle=True, local_batch=local,
                         process_index=jax.process_index(), process_count=jax.process_count())
  ds = grain.MapDataset.source(sampler).map(_TaskDataset(arrays)).batch(local, drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def _better(metric: str, new: float, old: float | None) -> bool:
  lower_is_better = metric == "mse"
  return old is None or (new < old if lower_is_better else new > old)


def finetune(cfg: FinetuneConfig, *, devices=None, quiet: bool = False,
             stop_event: threading.Event | None = None) -> dict:
  """Fine-tune once per seed; returns (and writes to ``run_dir/summary.json``) the per-seed
  dev/test metrics and their medians."""
  run_dir = Path(cfg.run_dir)
  source_cfg, source_params, tokenizer = load_pretrained(cfg.init_from)
  if cfg.data.tokenizer:
    tokenizer = Tokenizer.from_dir(cfg.data.tokenizer)
  if tokenizer is None:
    raise ConfigError(f"init_from={cfg.init_from} has no tokenizer; set data.tokenizer")
  train_examples = read_split("train", cfg.task, cfg.data)
  labels = infer_labels(train_examples, cfg.task, cfg.data.labels)
  model_cfg = task_model_config(source_cfg, cfg, labels)
  if model_cfg.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids, the model "
                      f"{model_cfg.vocab_size}; set data.tokenizer to the model's tokenizer")
  check_labels(train_examples, cfg.task, labels, "train")
  train = encode(train_examples, "train", cfg, tokenizer, labels)
  dev = load_split("validation", cfg, tokenizer, labels) if cfg.data.validation else None
  test = load_split("test", cfg, tokenizer, labels) if cfg.data.test else None
  params = initial_params(model_cfg, source_params, cfg.init_from)
  del source_params

  _check_run_dir(run_dir, cfg)
  run_dir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
  runs = {}
  for seed in cfg.train.seeds:
    seed_dir = run_dir if len(cfg.train.seeds) == 1 else run_dir / f"seed-{seed}"
    runs[seed] = _train_one(cfg, seed, seed_dir, model_cfg, params, tokenizer, train, dev, test,
                            devices=devices, quiet=quiet, stop_event=stop_event)
    if runs[seed].get("preempted"):
      return {"preempted": True, "seed": seed, **runs[seed]}
  summary = {"task": cfg.task, "init_from": cfg.init_from, "metric": cfg.metric,
             "labels": list(labels), "seeds": {str(s): r for s, r in runs.items()}}
  for split in ("dev", "test"):
    keys = set.intersection(*(set(r.get(split, {})) for r in runs.values()))
    if keys:
      summary[f"median_{split}"] = {k: statistics.median(r[split][k] for r in runs.values())
                                    for k in sorted(keys)}
  if jax.process_index() == 0:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def _check_run_dir(run_dir: Path, cfg: FinetuneConfig) -> None:
  """Resuming is for the same run: another task, start, model or data is refused up front."""
  saved = run_dir / "config.yaml"
  if not saved.exists():
    return
  old, new = yaml.safe_load(saved.read_text()) or {}, to_dict(cfg)
  diff = [k for k in ("task", "init_from", "model_overrides", "data") if old.get(k) != new[k]]
  if diff:
    raise ConfigError(f"{run_dir} holds a fine-tuning run with a different {', '.join(diff)}; "
                      "choose another run_dir")


def _train_one(cfg: FinetuneConfig, seed: int, run_dir: Path, model_cfg: ModelConfig,
               params: dict, tokenizer: Tokenizer, train: SplitData, dev: SplitData | None,
               test: SplitData | None, *, devices, quiet, stop_event) -> dict:
  tc = cfg.train
  steps_per_epoch = max(1, len(train) // tc.batch_size)
  steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
  eval_every = tc.eval_every or steps_per_epoch
  tx = make_optimizer(cfg.optim, steps, model_cfg.num_blocks)
  lr = schedule(cfg.optim, steps)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = cfg.mesh.rules
  if tc.batch_size % jax.process_count() or tc.eval_batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size and train.eval_batch_size must divide over the "
                      f"{jax.process_count()} processes")
  run_dir.mkdir(parents=True, exist_ok=True)
  best_file, model_dir = run_dir / "best.json", run_dir / "model"
  objective = TaskObjective(cfg.task)
  batches = train_iterator(train.arrays, tc.batch_size, seed)
  example = {k: v[:tc.batch_size] for k, v in train.arrays.items()}

  with sharding.use_mesh(mesh, rules):
    model = sharding.create_sharded(lambda: Model(model_cfg, rngs=nnx.Rngs(seed)), mesh, rules)
    assign_flat_params(model, params, strict=False)  # the head (and a new pooler) stay fresh
    engine = build_engine(model, objective, tx, mesh=mesh, rules=rules, seed=seed,
                          example_batch=example, grad_accum_steps=tc.grad_accum_steps,
                          lr_schedule=lr)
    del model
    predictor = Predictor(engine.graphdef, mesh, rules, tc.eval_batch_size, example)
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
    start = checkpointer.latest_step() or 0
    if start:
      engine.restore(checkpointer, start, batches)
    best = json.loads(best_file.read_text()) if best_file.exists() else {}
    writer = MetricWriter(run_dir)
    progress = Progress(steps, start, enabled=jax.process_index() == 0 and not quiet,
                        label=f"finetune seed {seed}")

    def evaluate(step: int) -> bool:
      """Score dev; keep the best model folder; True = stop (patience exhausted)."""
      nonlocal best
      metrics, _ = evaluate_logits(dev, predictor(engine.state.params, dev.arrays), cfg,
                                   model_cfg.label_names,
                                   tune_threshold=cfg.qa.tune_null_threshold)
      writer.write(step, metrics, prefix="eval")
      value = metrics[cfg.metric]
      if _better(cfg.metric, value, best.get("value")):
        best = {"step": step, "value": value, "metrics": metrics, "bad_evals": 0}
        save_model_dir(model_dir, engine.model(), tokenizer, overwrite=True)
      else:
        best["bad_evals"] = best.get("bad_evals", 0) + 1
      if jax.process_index() == 0:
        best_file.write_text(json.dumps(best, indent=2) + "\n")
      progress.log(f"step {step}: dev {cfg.metric} {value:.4f} (best {best['value']:.4f} "
                   f"at step {best['step']})")
      patience = tc.early_stopping_patience
      return patience is not None and best["bad_evals"] >= patience

    try:
      began = time.perf_counter()
      result = run_steps(engine, batches, start=start, steps=steps, checkpointer=checkpointer,
                         writer=writer, progress=progress, log_every=tc.log_every,
                         eval_every=eval_every, evaluate=evaluate if dev is not None else None,
                         data_iterator=batches,
                         tokens_per_step=tc.batch_size * cfg.data.max_seq_length,
                         stop_event=stop_event)
      train_seconds = time.perf_counter() - began  # includes compilation and dev evaluations
      if result.preempted:
        return {"preempted": True, "step": result.step}
      if dev is not None and best.get("step") != result.step and not result.stopped_early:
        evaluate(result.step)  # the final state competes for best too
      if dev is None:
        save_model_dir(model_dir, engine.model(), tokenizer, overwrite=True)
      out = {"steps": result.step - start, "train_seconds": train_seconds, "train": result.train,
             "model": str(model_dir)}
      if dev is not None:
        out.update(dev=best["metrics"], best_step=best["step"])
      if test is not None:
        best_model, _ = load_model_dir(model_dir, mesh=mesh, rules=rules)
        threshold = out.get("dev", {}).get("null_threshold")
        test_metrics, _ = evaluate_logits(
            test, predictor(nnx.state(best_model), test.arrays), cfg, model_cfg.label_names,
            threshold=threshold)
        writer.write(result.step, test_metrics, prefix="test")
        out["test"] = test_metrics
    finally:
      progress.close()
      writer.close()
      checkpointer.close()
  if jax.process_index() == 0:
    (run_dir / "result.json").write_text(json.dumps(out, indent=2) + "\n")
  return out


# -- serving a fine-tuned folder ---------------------------------------------------------------


def _task_of(model_cfg: ModelConfig) -> str:
  if model_cfg.task_head is None:
    raise ConfigError("this model has no task head; fine-tune it first (bertjax finetune)")
  if model_cfg.task_head == "classifier":
    return {"single_label": "classification", "multi_label": "multi_label",
            "regression": "regression"}[model_cfg.problem_type]
  return {"token_classifier": "token_classification", "qa": "qa"}[model_cfg.task_head]


def _serve(model_path: str, data_file: str, task_yaml: str | None, overrides: list[str],
           batch_size: int):
  from bertjax.tasks.config import finetune_config

  seeds = sorted(Path(model_path).glob("seed-*/model"))
  if seeds and not (Path(model_path) / "model").exists():
    raise ConfigError(f"{model_path} holds {len(seeds)} seed runs; pass one of them, e.g. "
                      f"{seeds[0].parent}")
  model_cfg = read_model_config(model_path)
  task = _task_of(model_cfg)
  base = [f"init_from={model_path}", f"task={task}"]
  if task_yaml:
    cfg = finetune_config(task_yaml, base + list(overrides))
  else:  # the settings it was fine-tuned with (fields, lengths, QA), when it comes from a run
    saved = _run_config(model_path)
    cfg = from_dict(FinetuneConfig, saved or {"init_from": model_path, "task": task})
    cfg = apply_overrides(cfg, base + list(overrides))
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test=data_file))
  mesh = sharding.make_mesh(cfg.mesh)
  with sharding.use_mesh(mesh, cfg.mesh.rules):
    model, tokenizer = load_model_dir(model_path, mesh=mesh, rules=cfg.mesh.rules)
    if tokenizer is None:
      raise ConfigError(f"{model_path} has no tokenizer/ folder")
    split = load_split("test", cfg, tokenizer, model_cfg.label_names)
    graphdef, params = nnx.split(model)
    predictor = Predictor(graphdef, mesh, cfg.mesh.rules, batch_size, split.arrays)
    logits = predictor(params, split.arrays)
  threshold = None
  best = resolve_model_dir(model_path).parent / "best.json"
  if best.exists():  # SQuAD 2.0: the threshold tuned on dev during fine-tuning
    threshold = json.loads(best.read_text()).get("metrics", {}).get("null_threshold")
  return evaluate_logits(split, logits, cfg, model_cfg.label_names, threshold=threshold)


def _run_config(model_path: str) -> dict | None:
  """The fine-tuning config saved in the run folder that holds this model (seed sub-runs
  included), or None."""
  model_dir = resolve_model_dir(model_path)
  for folder in (model_dir.parent, model_dir.parent.parent):
    f = folder / "config.yaml"
    if f.exists():
      data = yaml.safe_load(f.read_text()) or {}
      if isinstance(data, dict) and "task" in data and "model" not in data:
        return data
  return None


def evaluate_model(model_path: str, data_file: str, task_yaml: str | None = None,
                   overrides: list[str] = (), batch_size: int = 64) -> dict:
  metrics, _ = _serve(model_path, data_file, task_yaml, overrides, batch_size)
  if not metrics:
    raise ConfigError(f"{data_file} has no labels to evaluate against; use bertjax predict")
  return metrics


def predict_model(model_path: str, data_file: str, output: str, task_yaml: str | None = None,
                  overrides: list[str] = (), batch_size: int = 64) -> int:
  """Write one JSON line per example to ``output``; returns the count."""
  _, preds = _serve(model_path, data_file, task_yaml, overrides, batch_size)
  out = Path(output)
  tmp = out.with_name(f".{out.name}.partial")
  with open(tmp, "w", encoding="utf-8") as f:
    for p in preds:
      f.write(json.dumps(p, ensure_ascii=False) + "\n")
  tmp.replace(out)  # never a half-written predictions file
  return len(preds)
