"""Serving a fine-tuned model: ``evaluate_model`` and ``predict_model`` (the settings a model
was fine-tuned with come from its run folder; its task type from its head), and
``evaluate_embeddings`` for sentence encoders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import yaml
from flax import nnx

from bertjax import layout, sharding, storage
from bertjax.config import (ConfigError, FinetuneConfig, ModelConfig, TaskDataConfig,
                            apply_overrides, finetune_config, from_dict)
from bertjax.inference import Embedder
from bertjax.model_dir import load_model_dir, read_model_config, resolve_model_dir
from bertjax.tasks.data import load_split, task_buckets
from bertjax.tasks.predictor import Predictor
from bertjax.tasks.formats import TaskDataError, read_rows, resolve_format
from bertjax.tasks.formats import data_file as packaged_or_path
from bertjax.tasks.retrieval import (is_beir_folder, pair_metrics, read_beir, retrieval_metrics,
                                     sts_spearman)
from bertjax.tasks.types import of_model
from bertjax.train.run_dir import write_text_atomic


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
  task = of_model(model_cfg)
  base = [f"init_from={model_path}", f"task={task.name}"]
  if task_yaml:
    cfg = finetune_config(task_yaml, base + list(overrides))
  else:  # the settings it was fine-tuned with (fields, lengths, QA), when it comes from a run
    saved = _run_config(model_path)
    cfg = from_dict(FinetuneConfig, saved or {"init_from": model_path, "task": task.name})
    cfg = apply_overrides(cfg, base + list(overrides))
  data_file = packaged_or_path(data_file)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test=data_file))
  with sharding.use_mesh(sharding.make_mesh(cfg.mesh), cfg.mesh.rules):
    model, tokenizer = load_model_dir(model_path)
    if tokenizer is None:
      raise ConfigError(f"{model_path} has no tokenizer/ folder")
    split = load_split("test", cfg, task, tokenizer, model_cfg.label_names)
    if need_labels and not task.has_labels(split):
      raise ConfigError(f"{data_file} has no labels to evaluate against; use bertjax predict")
    graphdef, params = nnx.split(model)
    predictor = Predictor(graphdef, batch_size, split.arrays,
                          buckets=task_buckets(cfg, split.lengths),
                          per_token=task.per_token)
    logits = predictor(params, split.arrays)
  threshold = None
  best = resolve_model_dir(model_path).parent / layout.BEST
  if best.exists():  # SQuAD 2.0: the threshold tuned on dev during fine-tuning
    threshold = json.loads(best.read_text()).get("metrics", {}).get("null_threshold")
  return task.evaluate(split, logits, cfg, model_cfg.label_names, threshold=threshold)


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
