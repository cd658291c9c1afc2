"""Serving a fine-tuned model: ``Predictor`` (jitted task logits over padded global batches,
used by dev evaluation during training too), ``evaluate_model`` and ``predict_model`` (the
settings a model was fine-tuned with come from its run folder)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import yaml
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import layout, sharding, storage
from bertjax.config import (ConfigError, FinetuneConfig, ModelConfig, TaskDataConfig,
                            apply_overrides, finetune_config, from_dict)
from bertjax.data.buckets import sorted_batches
from bertjax.inference import Embedder
from bertjax.model_dir import load_model_dir, read_model_config, resolve_model_dir
from bertjax.tasks.data import (MODEL_INPUTS, evaluate_logits, has_labels, load_split,
                                per_token_logits, task_buckets)
from bertjax.tasks.formats import TaskDataError, read_rows, resolve_format
from bertjax.tasks.formats import data_file as packaged_or_path
from bertjax.tasks.retrieval import (is_beir_folder, pair_metrics, read_beir, retrieval_metrics,
                                     sts_spearman)
from bertjax.train.run_dir import write_text_atomic


class Predictor:
  """Jitted ``params, inputs -> task logits`` over global batches of rows sorted by length, each
  padded only to its bucket (one compile per bucket; rows split over processes like training
  batches); logits come back in input order, whole, on every host. Per-token logits at padding
  positions are a large negative value."""

  PAD_LOGIT = -1e9

  def __init__(self, graphdef, batch_size: int, example: dict, *,
               buckets: tuple[int, ...] | None = None, per_token: bool = False):
    """Call under ``sharding.use_mesh``: batches and logits live on that mesh."""
    mesh, _ = sharding.layout()
    self.batch_size, self.buckets, self.per_token = batch_size, buckets, per_token
    self.in_sh = {k: sharding.batch_sharding(mesh, ndim=example[k].ndim) for k in MODEL_INPUTS}

    def logits(params, batch):
      model = nnx.merge(graphdef, params)
      return model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                   padding_mask=batch["padding_mask"]).task_logits

    self.fn = jax.jit(logits, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, params, arrays: dict[str, np.ndarray]) -> np.ndarray:
    n, full = arrays["input_ids"].shape
    b = self.batch_size
    buckets = tuple(sorted(set(self.buckets or ()) | {full}))
    procs, pid = jax.process_count(), jax.process_index()
    local = b // procs
    out = None
    for bucket, idx in sorted_batches(arrays["padding_mask"].sum(1), b, buckets):
      rows = {k: arrays[k][idx, :bucket] for k in MODEL_INPUTS}
      short = b - len(idx)
      if short:  # pad the last batch with copies of its first row (dropped below)
        rows = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in rows.items()}
      mine = {k: v[pid * local:(pid + 1) * local] for k, v in rows.items()}
      logits = np.asarray(self.fn(params, sharding.global_batch(mine, self.in_sh)),
                          np.float32)[:len(idx)]
      if out is None:
        shape = (n, full) + logits.shape[2:] if self.per_token else (n,) + logits.shape[1:]
        out = np.full(shape, self.PAD_LOGIT if self.per_token else 0.0, np.float32)
      if self.per_token:  # padding positions never carry scores
        real = rows["padding_mask"][:len(idx)].reshape(len(idx), bucket, *[1] * (logits.ndim - 2))
        out[idx, :bucket] = np.where(real, logits, self.PAD_LOGIT)
      else:
        out[idx] = logits
    return out


def _task_of(model_cfg: ModelConfig) -> str:
  if model_cfg.task_head is None and model_cfg.sentence_pooling:
    raise ConfigError("this is a sentence-embedding model: bertjax embed gives its vectors, "
                      "bertjax evaluate scores it on a BEIR folder, an STS or a pairs file")
  if model_cfg.task_head is None:
    raise ConfigError("this model has no task head; fine-tune it first (bertjax finetune)")
  if model_cfg.task_head == "classifier":
    return {"single_label": "classification", "multi_label": "multi_label",
            "regression": "regression"}[model_cfg.problem_type]
  return {"token_classifier": "token_classification", "qa": "qa"}[model_cfg.task_head]


def _one_model(model_path: str) -> ModelConfig:
  """The config of the model a path names; a run folder of several seeds names none."""
  seeds = sorted(storage.as_path(model_path).glob(f"{layout.SEEDS}/{layout.MODEL}"))
  if seeds and not (storage.as_path(model_path) / layout.MODEL).exists():
    raise ConfigError(f"{model_path} holds {len(seeds)} seed runs; pass one of them, e.g. "
                      f"{seeds[0].parent}")
  return read_model_config(model_path)


def _serve(model_path: str, data_file: str, task_yaml: str | None, overrides: list[str],
           batch_size: int, need_labels: bool = False):
  model_cfg = _one_model(model_path)
  task = _task_of(model_cfg)
  base = [f"init_from={model_path}", f"task={task}"]
  if task_yaml:
    cfg = finetune_config(task_yaml, base + list(overrides))
  else:  # the settings it was fine-tuned with (fields, lengths, QA), when it comes from a run
    saved = _run_config(model_path)
    cfg = from_dict(FinetuneConfig, saved or {"init_from": model_path, "task": task})
    cfg = apply_overrides(cfg, base + list(overrides))
  data_file = packaged_or_path(data_file)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test=data_file))
  with sharding.use_mesh(sharding.make_mesh(cfg.mesh), cfg.mesh.rules):
    model, tokenizer = load_model_dir(model_path)
    if tokenizer is None:
      raise ConfigError(f"{model_path} has no tokenizer/ folder")
    split = load_split("test", cfg, tokenizer, model_cfg.label_names)
    if need_labels and not has_labels(split, cfg.task):
      raise ConfigError(f"{data_file} has no labels to evaluate against; use bertjax predict")
    graphdef, params = nnx.split(model)
    predictor = Predictor(graphdef, batch_size, split.arrays,
                          buckets=task_buckets(cfg, split.lengths),
                          per_token=per_token_logits(cfg.task))
    logits = predictor(params, split.arrays)
  threshold = None
  best = resolve_model_dir(model_path).parent / layout.BEST
  if best.exists():  # SQuAD 2.0: the threshold tuned on dev during fine-tuning
    threshold = json.loads(best.read_text()).get("metrics", {}).get("null_threshold")
  return evaluate_logits(split, logits, cfg, model_cfg.label_names, threshold=threshold)


def _run_config(model_path: str) -> dict | None:
  """The fine-tuning config saved in the run folder that holds this model (seed sub-runs
  included), or None."""
  model_dir = resolve_model_dir(model_path)
  for folder in (model_dir.parent, model_dir.parent.parent):
    f = folder / layout.CONFIG
    if f.exists():
      data = yaml.safe_load(f.read_text()) or {}
      if isinstance(data, dict) and "task" in data and "model" not in data:
        return data
  return None


def evaluate_embeddings(model_path: str, data_file: str, batch_size: int = 64) -> dict:
  """A sentence-embedding model on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv:
  recall@1/10, MRR@10, nDCG@10), an STS file (``sentence1``, ``sentence2``, ``score``:
  Spearman/Pearson of the cosine) or a pairs file (``anchor``, ``positive``: each anchor's
  positive retrieved among all positives). A model that is not a sentence encoder is read with
  mean pooling (what it gives before any contrastive training)."""
  data_file = packaged_or_path(data_file)
  if not (is_beir_folder(data_file) or storage.as_path(data_file).is_file()):
    raise TaskDataError(f"{data_file} does not exist (a BEIR folder, an STS or a pairs file)")
  model, tokenizer = load_model_dir(model_path)
  if tokenizer is None:
    raise ConfigError(f"{model_path} has no tokenizer/ folder")
  embedder = Embedder(model, tokenizer, pooling=model.config.sentence_pooling or "mean",
                      batch_size=batch_size)
  if is_beir_folder(data_file):
    docs, queries, relevant = read_beir(data_file)
    return retrieval_metrics(embedder(queries), embedder(docs), relevant)
  rows = [r for _, r in read_rows(data_file, resolve_format(data_file, TaskDataConfig()),
                                  TaskDataConfig())]
  if rows and all({"sentence1", "sentence2", "score"} <= set(r) for r in rows):
    try:
      gold = np.asarray([float(r["score"]) for r in rows])
    except (TypeError, ValueError):
      raise TaskDataError(f"{data_file}: a 'score' is not a number") from None
    return sts_spearman(embedder([r["sentence1"] for r in rows]),
                        embedder([r["sentence2"] for r in rows]), gold)
  if rows and all({"anchor", "positive"} <= set(r) for r in rows):
    return pair_metrics(embedder, rows)
  if not model.config.sentence_pooling:  # a body given a task's file
    raise ConfigError(f"{model_path} has no task head; fine-tune it first (bertjax finetune), or "
                      "evaluate its embeddings on a BEIR folder, an STS or a pairs file")
  raise TaskDataError(f"{data_file}: not a BEIR folder, an STS file (sentence1, sentence2, "
                      "score) or a pairs file (anchor, positive)")


def evaluate_model(model_path: str, data_file: str, task_yaml: str | None = None,
                   overrides: list[str] = (), batch_size: int = 64) -> dict:
  model_cfg = _one_model(model_path)
  if not task_yaml and model_cfg.task_head is None:
    return evaluate_embeddings(model_path, data_file, batch_size)  # a body: mean pooling
  metrics, _ = _serve(model_path, data_file, task_yaml, overrides, batch_size, need_labels=True)
  if not metrics:
    raise ConfigError(f"{data_file} has no labels to evaluate against; use bertjax predict")
  return metrics


def predict_model(model_path: str, data_file: str, output: str, task_yaml: str | None = None,
                  overrides: list[str] = (), batch_size: int = 64) -> int:
  """Write one JSON line per example to ``output``; returns the count."""
  out = storage.as_path(output)
  if out.is_dir() or not (storage.is_url(out) or out.parent.is_dir()):
    problem = "is a folder" if out.is_dir() else "is in a folder that does not exist"
    raise ConfigError(f"--output {output} {problem}; name a file to write")
  _, preds = _serve(model_path, data_file, task_yaml, overrides, batch_size)
  write_text_atomic(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
  return len(preds)
