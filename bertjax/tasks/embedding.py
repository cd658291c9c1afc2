"""``task: sentence_embedding``: contrastive training of a sentence encoder on the shared engine.

Data: JSONL / CSV / TSV rows with an anchor and a positive text, and optionally a hard negative
(``embedding.anchor_field`` / ``positive_field`` / ``negative_field``); ``data.dataset:
book-pairs`` is the shipped set (``bertjax/data/book_pairs.py`` says how it is built). The loss
is in-batch-negatives InfoNCE over the global batch (``objectives/contrastive.py``), with
cached gradients for batches larger than memory (``embedding.chunk``).

Each dev evaluation (and one before the first step, so a run reports where it started) embeds
every dev anchor and every dev positive and retrieves each anchor's positive among all of them:
recall@1/10, MRR@10, nDCG@10. The best model folder records its pooling and normalisation, so
``bertjax embed`` uses them and ``export-hf`` writes a sentence-transformers folder.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from bertjax import layout, sharding, storage
from bertjax.config import FinetuneConfig, ModelConfig, from_dict, to_dict
from bertjax.data.tokenizer import Tokenizer
from bertjax.inference import Embedder
from bertjax.model_dir import check_vocab, load_model_dir, save_model_dir
from bertjax.models import Model
from bertjax.objectives.contrastive import COLUMNS, ContrastiveObjective
from bertjax.tasks.data import task_buckets, train_iterator
from bertjax.tasks.formats import TaskDataError, read_rows, resolve_format, split_source
from bertjax.tasks.retrieval import pair_metrics
from bertjax.tasks.seeds import BestDev, run_seeds
from bertjax.tasks.start import StartPoint, load_start, with_overrides
from bertjax.train.engine import build_engine, run_steps
from bertjax.train.optim import make_optimizer, schedule
from bertjax.train.run import open_run, plan_mesh
from bertjax.train.run_dir import check_run_dir_path, write_text_atomic



def read_pairs(split: str, cfg: FinetuneConfig) -> list[dict[str, str]]:
  """One split's rows as {"anchor", "positive"[, "negative"]}; a negative column is used when
  every row has one."""
  where = split_source(split, cfg.data)
  if not where:
    raise TaskDataError(f"data.{split} is not set")
  if not storage.as_path(where).is_file():
    raise TaskDataError(f"data.{split}: {where} does not exist")
  fmt = resolve_format(where, cfg.data)
  if fmt not in ("jsonl", "csv", "tsv"):
    raise TaskDataError(f"{where}: task=sentence_embedding reads JSONL, CSV or TSV pairs")
  e = cfg.embedding
  fields = {"anchor": e.anchor_field, "positive": e.positive_field, "negative": e.negative_field}
  rows = read_rows(where, fmt, cfg.data)
  with_negative = bool(rows) and all(r.get(e.negative_field) not in (None, "") for _, r in rows)
  out = []
  for n, row in rows:
    ex = {}
    for column, field in fields.items():
      if column == "negative" and not with_negative:
        continue
      value = row.get(field)
      if not isinstance(value, str) or not value.strip():
        raise TaskDataError(f"{where}:{n}: no text in {field!r} (embedding.{column}_field)")
      ex[column] = value
    out.append(ex)
  if len(out) < 2:
    raise TaskDataError(f"{where}: {len(out)} pair(s); in-batch negatives need at least 2")
  return out


def encode_pairs(rows: list[dict[str, str]], tokenizer: Tokenizer, max_length: int) -> dict:
  """{column}_ids / {column}_mask arrays [n, max_length] ([CLS] text [SEP], truncated)."""
  arrays = {}
  body = max_length - tokenizer.num_special_tokens[0]
  for column in COLUMNS:
    if column not in rows[0]:
      continue
    encoded = tokenizer.tokenize_batch([r[column] for r in rows])
    ids = np.full((len(rows), max_length), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(rows), int)
    for i, (tokens, _, _) in enumerate(encoded):
      row = [tokenizer.cls_id, *tokens[:body], tokenizer.sep_id]
      ids[i, :len(row)] = row
      lengths[i] = len(row)
    arrays[f"{column}_ids"] = ids
    arrays[f"{column}_mask"] = np.arange(max_length)[None] < lengths[:, None]
  return arrays


def pair_batches(arrays: dict, cfg: FinetuneConfig, seed: int):
  """-> (training batches, an example batch). Random batches: not grouped by length (rows of
  one length would make easier negatives); each column (anchors, positives, negatives) padded
  to its own length bucket, as sentence-transformers pads each column to its longest."""
  columns = [c for c in COLUMNS if f"{c}_ids" in arrays]
  lengths = np.stack([arrays[f"{c}_mask"].sum(1) for c in columns], 1)  # [n, columns]
  per_token = {f"{c}_{kind}": i for i, c in enumerate(columns) for kind in ("ids", "mask")}
  batches = train_iterator(arrays, cfg.train.batch_size, seed,
                           buckets=task_buckets(cfg, lengths.ravel()), per_token=per_token,
                           group=False, lengths=lengths)
  return batches, {k: v[:cfg.train.batch_size] for k, v in arrays.items()}


def embedding_model_config(source: ModelConfig, cfg: FinetuneConfig) -> ModelConfig:
  """The source body without heads, marked as a sentence encoder with this run's pooling."""
  fields = to_dict(source)
  fields.update(heads=[], sentence_pooling=cfg.embedding.pooling,
                sentence_normalize=cfg.embedding.normalize, generator_width_fraction=0.0)
  return with_overrides(from_dict(ModelConfig, fields, prefix="model"), cfg)


def evaluate_pairs(model: Model, tokenizer: Tokenizer, rows: list[dict[str, str]],
                   cfg: FinetuneConfig) -> dict[str, float]:
  """Retrieve each anchor's positive among all the split's positives."""
  embedder = Embedder(model, tokenizer, pooling=cfg.embedding.pooling,
                      max_length=cfg.data.max_seq_length, batch_size=cfg.train.eval_batch_size)
  return pair_metrics(embedder, rows)


def finetune_embeddings(cfg: FinetuneConfig, task, *, devices=None, quiet: bool = False,
                        stop_event: threading.Event | None = None,
                        allow_config_change: bool = False) -> dict:
  """Train once per seed (as ``tasks.finetune.finetune``); the summary holds each seed's dev
  metrics before training (``dev_at_start``) and at its best step, and its test metrics."""
  run_dir = storage.absolute(cfg.run_dir)
  check_run_dir_path(run_dir)
  start = load_start(cfg)
  model_cfg = embedding_model_config(start.config, cfg)
  check_vocab(model_cfg.vocab_size, start.tokenizer.vocab_size, f"init_from={cfg.init_from}",
              "set data.tokenizer to the model's tokenizer")
  train = read_pairs("train", cfg)
  if len(train) < cfg.train.batch_size:
    raise TaskDataError(f"data.train: {len(train)} pairs, fewer than train.batch_size="
                        f"{cfg.train.batch_size}")
  dev = read_pairs("validation", cfg) if split_source("validation", cfg.data) else None
  test = read_pairs("test", cfg) if split_source("test", cfg.data) else None
  arrays = encode_pairs(train, start.tokenizer, cfg.data.max_seq_length)
  start = start.for_model(model_cfg)
  mesh = plan_mesh(cfg.mesh, devices, train_batch_size=cfg.train.batch_size,
                   train_eval_batch_size=cfg.train.eval_batch_size)

  train_one = lambda seed, seed_dir: _train_one(cfg, task, seed, seed_dir, mesh, model_cfg,
                                                start, arrays, dev, test, quiet=quiet,
                                                stop_event=stop_event)
  return run_seeds(cfg, task, run_dir, train_one, splits=("dev_at_start", "dev", "test"),
                   allow_config_change=allow_config_change)


def _train_one(cfg: FinetuneConfig, task, seed: int, run_dir: Path, mesh, model_cfg: ModelConfig,
               start: StartPoint, arrays: dict, dev, test, *, quiet, stop_event) -> dict:
  tc, e, tokenizer = cfg.train, cfg.embedding, start.tokenizer
  steps_per_epoch = max(1, len(arrays["anchor_ids"]) // tc.batch_size)
  steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
  eval_every = tc.eval_every or steps_per_epoch
  tx = functools.partial(make_optimizer, cfg.optim, num_blocks=model_cfg.num_blocks)
  lr = lambda step, total: schedule(cfg.optim, total)(step)
  model_dir = run_dir / layout.MODEL
  objective = ContrastiveObjective(pooling=e.pooling, scale=e.scale, symmetric=e.symmetric,
                                   chunk=e.chunk)
  batches, example = pair_batches(arrays, cfg, seed)

  with open_run(run_dir, mesh, cfg.mesh, cfg.checkpoint, quiet=quiet,
                label=f"embedding seed {seed}", stop_event=stop_event) as run:
    make = lambda: Model(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_params = sharding.abstract_model(make)
    engine = build_engine(graphdef, abstract_params, objective, tx, seed=seed, total_steps=steps,
                          example_batch=example, lr_schedule=lr, max_skips=tc.max_skips)
    step = run.restore(engine, batches)
    if step is None:
      engine.init(make, values=start.values(engine))
    step = step or 0
    save = lambda: save_model_dir(model_dir, engine.model(), tokenizer, overwrite=True)
    best = BestDev(cfg, task, run_dir, run, save)
    at_start = best.best.get("at_start")  # the dev metrics before the first step
    if dev is not None and at_start is None and step == 0:
      at_start = evaluate_pairs(engine.model(), tokenizer, dev, cfg)
      run.log(f"step 0: dev {best.metric} {at_start[best.metric]:.4f} before training")

    def evaluate(step: int) -> bool:
      return best.record(step, evaluate_pairs(engine.model(), tokenizer, dev, cfg),
                         at_start=at_start)

    began = time.perf_counter()
    result = run_steps(engine, batches, run, start=step, steps=steps, log_every=tc.log_every,
                       eval_every=eval_every, evaluate=evaluate if dev is not None else None,
                       data_iterator=batches,
                       tokens_per_step=tc.batch_size * cfg.data.max_seq_length *
                       sum(k.endswith("_ids") for k in arrays))
    train_seconds = time.perf_counter() - began
    if result.preempted:
      return {"preempted": True, "step": result.step}
    if dev is not None and best.best.get("step") != result.step and not result.stopped_early:
      evaluate(result.step)
    if dev is None:
      save()
    out = {"steps": result.step, "train_seconds": train_seconds, "train": result.train,
           "model": str(model_dir)}
    if dev is not None:
      out.update(dev_at_start=at_start, dev=best.best["metrics"], best_step=best.best["step"])
    if test is not None:
      best_model, _ = load_model_dir(model_dir)
      out["test"] = evaluate_pairs(best_model, tokenizer, test, cfg)
      run.writer.write(result.step, out["test"], prefix="test")
  if jax.process_index() == 0:
    write_text_atomic(run_dir / layout.RESULT, json.dumps(out, indent=2) + "\n")
  return out
