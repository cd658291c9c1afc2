"""End-to-end fine-tuning on the shared engine with a tiny BERT: it learns synthetic
classification and NER tasks, keeps the best dev checkpoint, stops early, runs several seeds,
gives the same losses on a sharded mesh, serves evaluate / predict, and exports a fine-tuned
model that transformers loads with equal logits."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import transformers as T
import torch

from bertjax.model_dir import load_model_dir, save_model_dir
from bertjax.cli import main
from bertjax.config import ConfigError, model_config
from bertjax.data.corpus import SHIPPED_TOKENIZERS
from bertjax.data.sources import CORPUS_DIR
from bertjax.data.tokenizer import Tokenizer
from bertjax.models import Model
from bertjax.config import finetune_config
from bertjax.tasks.finetune import finetune
from bertjax.tasks.serve import evaluate_model, predict_model
from bertjax.train.optim import layer_depth, scale_by_layer_decay
from bertjax.train.run_dir import read_status
from flax import nnx

POSITIVE = ["good", "great", "fine", "happy", "lovely", "bright"]
NEGATIVE = ["bad", "awful", "sad", "poor", "dull", "grim"]
FILLER = ["the", "film", "was", "a", "story", "of", "men", "and", "their", "house", "in", "town"]
NAMES = [["john", "smith"], ["mary"], ["elizabeth", "bennet"], ["darcy"]]
PLACES = [["london"], ["new", "york"], ["paris"]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  tokenizer = Tokenizer.from_dir(CORPUS_DIR / SHIPPED_TOKENIZERS["corpus"])
  cfg = model_config({"family": "bert", "vocab_size": tokenizer.vocab_size, "hidden_size": 32,
                      "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                      "max_position_embeddings": 64, "hidden_dropout": 0.0,
                      "attention_dropout": 0.0, "heads": ["mlm", "nsp"]})
  path = tmp_path_factory.mktemp("tiny") / "model"
  save_model_dir(path, Model(cfg, rngs=nnx.Rngs(0)), tokenizer)
  return path


def _sentiment(tmp_path, n_train=320, n_dev=64):
  rng = random.Random(0)
  for split, n in (("train", n_train), ("dev", n_dev)):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        label = rng.random() < 0.5
        words = rng.sample(FILLER, 5) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        f.write(json.dumps({"text": " ".join(words), "label": "fresh" if label else "rotten"}) + "\n")
  return tmp_path / "train.jsonl", tmp_path / "dev.jsonl"


def _ner(tmp_path, n_train=256, n_dev=48):
  rng = random.Random(1)
  for split, n in (("train", n_train), ("dev", n_dev)):
    with open(tmp_path / f"{split}.conll", "w") as f:
      for _ in range(n):
        words, tags = [], []
        for _ in range(6):
          r = rng.random()
          kind, pool = ("person", NAMES) if r < 0.2 else ("loc", PLACES) if r < 0.35 else (None, None)
          if kind:
            entity = rng.choice(pool)
            words += entity
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
          else:
            words.append(rng.choice(FILLER))
            tags.append("O")
        f.write("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
  return tmp_path / "train.conll", tmp_path / "dev.conll"


def _cfg(preset, tiny_model, run_dir, train, dev, *extra):
  """One length bucket (one compile) unless ``extra`` sets ``data.buckets=[]``."""
  return finetune_config(preset, [
      f"init_from={tiny_model}", f"run_dir={run_dir}", f"data.train={train}",
      f"data.validation={dev}", f"data.test={dev}", "data.max_seq_length=24", "data.buckets=[24]",
      "optim.learning_rate=3e-3", "train.batch_size=16", "train.log_every=5", *extra])


def test_sequence_classification_learns_and_serves(tiny_model, tmp_path):
  train, dev = _sentiment(tmp_path)
  run = tmp_path / "run"
  summary = finetune(_cfg("rt-polarity", tiny_model, run, train, dev, "train.epochs=4",
                          "data.buckets=[]"), quiet=True)  # length buckets from the data
  result = summary["seeds"]["0"]
  assert result["dev"]["accuracy"] >= 0.9, result
  assert result["test"] == result["dev"]  # the best model is the one scored on test
  best = json.loads((run / "best.json").read_text())
  assert best["value"] == result["dev"]["accuracy"] and result["best_step"] == best["step"]
  events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert sum(e["split"] == "eval" for e in events) == 4  # one dev evaluation per epoch
  assert {"train", "test"} <= {e["split"] for e in events}
  # evaluate / predict on the fine-tuned folder
  assert evaluate_model(str(run), str(dev))["accuracy"] == pytest.approx(result["dev"]["accuracy"])
  out = tmp_path / "pred.jsonl"
  assert predict_model(str(run), str(dev), str(out)) == 64
  first = json.loads(out.read_text().splitlines()[0])
  assert first["label"] in ("rotten", "fresh") and abs(sum(first["probabilities"].values()) - 1) < 1e-5
  # export -> transformers BertForSequenceClassification: equal logits, label names kept
  assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
  hf = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
  assert hf.config.id2label == {0: "rotten", 1: "fresh"}
  assert_same_task_logits(run, hf)


def assert_same_task_logits(run, hf, text: str = "a happy story of the town") -> None:
  """The fine-tuned folder ``run`` and its transformers export ``hf`` give equal logits."""
  model, tokenizer = load_model_dir(run)
  enc = tokenizer.encode(text)
  ids = np.array([enc.ids])
  ours = np.asarray(model(ids, token_type_ids=np.array([enc.type_ids]),
                          padding_mask=np.ones_like(ids, bool)).task_logits)
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor([enc.type_ids])).logits
  assert np.max(np.abs(ours - theirs.numpy())) <= 1e-5


def test_token_classification_learns_entities(tiny_model, tmp_path):
  train, dev = _ner(tmp_path)
  summary = finetune(_cfg("wnut16-ner", tiny_model, tmp_path / "run", train, dev,
                          "train.epochs=6"), quiet=True)
  dev_metrics = summary["seeds"]["0"]["dev"]
  assert dev_metrics["f1"] >= 0.85, dev_metrics
  assert summary["labels"] == ["B-loc", "B-person", "I-loc", "I-person", "O"]


def test_early_stopping_and_seed_median(tiny_model, tmp_path):
  train, dev = _sentiment(tmp_path, n_train=96, n_dev=32)
  # a learning rate too small to change the dev metric: patience 1 stops at the 2nd evaluation
  summary = finetune(_cfg("rt-polarity", tiny_model, tmp_path / "run", train, dev,
                          "train.epochs=5", "optim.learning_rate=1e-12",
                          "train.early_stopping_patience=1", "train.seeds=[3, 4, 5]"),
                     quiet=True)
  steps_per_epoch = 96 // 16
  for seed in ("3", "4", "5"):
    assert summary["seeds"][seed]["steps"] == 2 * steps_per_epoch
    assert (tmp_path / "run" / f"seed-{seed}" / "model" / "config.yaml").exists()
  accs = sorted(summary["seeds"][s]["dev"]["accuracy"] for s in ("3", "4", "5"))
  assert summary["median_dev"]["accuracy"] == accs[1]
  with pytest.raises(ConfigError, match="holds 3 seed runs; pass one of them"):
    evaluate_model(str(tmp_path / "run"), str(dev))
  assert evaluate_model(str(tmp_path / "run" / "seed-4"), str(dev))["accuracy"] == \
      pytest.approx(summary["seeds"]["4"]["dev"]["accuracy"])


def test_sharded_mesh_gives_the_same_losses(tiny_model, tmp_path):
  train, dev = _sentiment(tmp_path, n_train=64, n_dev=16)
  losses = {}
  for mesh in (["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"],
               ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]):
    import jax

    devices = jax.devices()[:1] if mesh[0] == "mesh.data=1" else None
    run = tmp_path / mesh[0]
    finetune(_cfg("rt-polarity", tiny_model, run, train, dev, "train.epochs=1",
                  "train.log_every=1", *mesh), quiet=True, devices=devices)
    losses[mesh[0]] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                       if json.loads(x)["split"] == "train"]
  a, b = losses.values()
  assert len(a) == 4 and np.max(np.abs(np.array(a) - np.array(b))) <= 1e-5


def _squad(path, n, seed=2):
  """SQuAD v2: "where" is the city after "in"; every 4th context names none (unanswerable)."""
  rng = random.Random(seed)
  data = []
  for i in range(n):
    words = rng.sample(FILLER, 8)
    city = rng.choice(["london", "paris", "york"])
    context = " ".join(words if i % 4 == 0 else words[:4] + ["in", city] + words[4:])
    start = len(" ".join(words[:4] + ["in"])) + 1
    qas = [{"id": f"q{i}", "question": "where", "is_impossible": i % 4 == 0,
            "answers": [] if i % 4 == 0 else [{"text": city, "answer_start": start}]}]
    data.append({"title": "t", "paragraphs": [{"context": context, "qas": qas}]})
  path.write_text(json.dumps({"version": "v2.0", "data": data}))
  return data


def test_qa_pipeline_end_to_end(tiny_model, tmp_path):
  """Train on SQuAD-format data with unanswerable questions until it answers: predictions
  are the gold spans (or "" where there is none), EM/F1 computed from them equal the
  reported ones, and the dev-tuned null threshold is reported and reused."""
  path = tmp_path / "squad.json"
  data = _squad(path, 96)
  summary = finetune(finetune_config("squad-v2", [
      f"init_from={tiny_model}", f"run_dir={tmp_path / 'run'}", f"data.train={path}",
      f"data.validation={path}", "data.max_seq_length=16", "data.doc_stride=4",
      "train.batch_size=16", "train.epochs=12", "optim.learning_rate=3e-3"]), quiet=True)
  dev = summary["seeds"]["0"]["dev"]
  assert {"exact", "f1", "has_ans_f1", "no_ans_f1", "null_threshold"} <= set(dev)
  out = tmp_path / "pred.jsonl"
  predict_model(str(tmp_path / "run"), str(path), str(out), task_yaml="squad-v2")
  preds = {p["id"]: p for p in map(json.loads, out.read_text().splitlines())}
  gold = {qa["id"]: qa["answers"][0]["text"] if qa["answers"] else ""
          for a in data for p in a["paragraphs"] for qa in p["qas"]}
  assert preds.keys() == gold.keys()
  exact = 100 * np.mean([preds[q]["answer"] == gold[q] for q in gold])
  assert exact >= 90, [(gold[q], preds[q]["answer"]) for q in gold if preds[q]["answer"] != gold[q]]
  assert sum(preds[q]["answer"] == gold[q] != "" for q in gold) >= 0.9 * 72  # real spans
  assert dev["exact"] == pytest.approx(exact)  # single-word answers: F1 = EM per question
  assert dev["f1"] == pytest.approx(exact)


def test_config_errors_are_one_line(tiny_model, tmp_path, capsys):
  train, dev = _sentiment(tmp_path, n_train=16, n_dev=8)
  with pytest.raises(ConfigError, match="unknown config key train.epoch; did you mean train.epochs"):
    finetune_config("rt-polarity", ["train.epoch=3"])
  with pytest.raises(ConfigError, match="unknown tasks preset 'rt-polarty'; did you mean rt-polarity"):
    finetune_config("rt-polarty")
  code = main(["finetune", "rt-polarity", f"init_from={tiny_model}", f"data.train={train}",
               f"data.validation={tmp_path / 'missing.jsonl'}", f"run_dir={tmp_path / 'r'}",
               "data.max_seq_length=24"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and "missing.jsonl does not exist" in err
  with pytest.raises(ConfigError, match="train.metric='bleu' is not a classification metric"):
    finetune(_cfg("rt-polarity", tiny_model, tmp_path / "m", train, dev, "train.metric=bleu",
                  "train.epochs=1"), quiet=True)


def test_layer_decay_multipliers():
  """ELECTRA-style: block l of L -> decay^(L - l - 1)... i.e. lr * decay^(L - depth)."""
  import jax.numpy as jnp

  assert layer_depth(("encoder", "embeddings", "word", "embedding"), 3) == 0
  assert layer_depth(("encoder", "layers", "2", "mlp", "wo", "kernel"), 3) == 3
  assert layer_depth(("task", "output", "kernel"), 3) == 3
  updates = {"encoder": {"embeddings": {"w": jnp.ones(2)},
                         "layers": {"0": {"w": jnp.ones(2)}, "1": {"w": jnp.ones(2)}}},
             "task": {"w": jnp.ones(2)}}
  tx = scale_by_layer_decay(0.5, 2)
  out, _ = tx.update(updates, tx.init(updates))
  assert float(out["encoder"]["embeddings"]["w"][0]) == 0.25
  assert float(out["encoder"]["layers"]["0"]["w"][0]) == 0.5
  assert float(out["encoder"]["layers"]["1"]["w"][0]) == 1.0
  assert float(out["task"]["w"][0]) == 1.0


def test_two_processes_equal_one_process(tiny_model, tmp_path):
  """2 processes x 4 devices: same training losses and dev metrics as 1 process x 8, and the
  best model folder written by both processes loads."""
  import os
  import subprocess
  import sys
  from pathlib import Path

  import portpicker

  tests = Path(__file__).resolve().parent
  train, dev = _sentiment(tmp_path, n_train=64, n_dev=40)
  args = lambda run: [f"init_from={tiny_model}", f"run_dir={run}", f"data.train={train}",
                      f"data.validation={dev}", "data.test=", "data.max_seq_length=24",
                      "train.batch_size=16",
                      "train.eval_batch_size=16", "train.epochs=2", "train.log_every=1",
                      "optim.learning_rate=3e-3"]
  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=f"{tests}:{tests.parent}")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(tests / "mp_finetune.py"), str(i), str(port),
                             "rt-polarity", *args(tmp_path / "two")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one = finetune(finetune_config("rt-polarity", args(tmp_path / "one")), quiet=True)
  two = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert two["seeds"]["0"]["dev"] == pytest.approx(one["seeds"]["0"]["dev"], abs=1e-6)
  losses = lambda run: [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                        if json.loads(x)["split"] == "train"]
  assert np.allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), atol=1e-6)
  assert evaluate_model(str(tmp_path / "two"), str(dev))["accuracy"] == pytest.approx(
      one["seeds"]["0"]["dev"]["accuracy"])


@pytest.mark.parametrize("family,pooling", [("roberta", "cls"), ("albert", "pooler"),
                                            ("distilbert", "cls"), ("electra", "cls"),
                                            ("modernbert", "cls"), ("eurobert", "late")])
def test_every_family_fine_tunes_with_its_own_head(family, pooling, tmp_path):
  """A pretrained body of each family (its saved config predating any task head) gets the
  family's classifier, trains, and serves predictions."""
  tokenizer = Tokenizer.from_dir(CORPUS_DIR / SHIPPED_TOKENIZERS["corpus"])
  sizes = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id,
           "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 48,
           "max_position_embeddings": 40, "hidden_dropout": 0.0, "attention_dropout": 0.0}
  if family == "albert":
    sizes["embedding_size"] = 16
  if family == "roberta":
    sizes["position_offset"] = tokenizer.pad_id + 1
  cfg = model_config({"family": family, **sizes})
  save_model_dir(tmp_path / "body", Model(cfg, rngs=nnx.Rngs(0)), tokenizer)
  train, dev = _sentiment(tmp_path, n_train=128, n_dev=32)
  summary = finetune(_cfg("rt-polarity", tmp_path / "body", tmp_path / "run", train, dev,
                          "train.epochs=10"), quiet=True)
  model, _ = load_model_dir(tmp_path / "run")
  assert model.config.classifier_pooling == pooling and model.config.heads == ("classifier",)
  assert model.config.labels == ("rotten", "fresh")
  assert summary["seeds"]["0"]["dev"]["accuracy"] >= 0.9  # the head learns through its pooling
  assert evaluate_model(str(tmp_path / "run"), str(dev))["accuracy"] == pytest.approx(
      summary["seeds"]["0"]["dev"]["accuracy"])


def test_layer_decay_on_a_real_parameter_tree():
  """Through make_optimizer on an nnx parameter state: first Adam step ~lr * decay^(L - depth)."""
  import jax
  import jax.numpy as jnp

  from bertjax.config import OptimConfig
  from bertjax.train.optim import make_optimizer

  cfg = model_config({"family": "bert", "vocab_size": 50, "hidden_size": 8, "num_layers": 2,
                      "num_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16})
  _, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  tx = make_optimizer(OptimConfig(learning_rate=1.0, warmup_steps=0, layer_decay=0.5,
                                  clip_norm=None, weight_decay=0.0), 10, cfg.num_blocks)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  size = lambda x: float(jnp.abs(x[...]).max())
  enc = updates["encoder"]
  assert size(enc["embeddings"]["word"]["embedding"]) == pytest.approx(0.25, rel=1e-4)
  assert size(enc["layers"][0]["mlp"]["wo"]["kernel"]) == pytest.approx(0.5, rel=1e-4)
  assert size(enc["layers"][1]["mlp"]["wo"]["kernel"]) == pytest.approx(1.0, rel=1e-4)
  assert size(enc["pooler"]["dense"]["kernel"]) == pytest.approx(1.0, rel=1e-4)


# -- the task presets on fixtures in their real file formats --------------------------------

_NEUTRAL = ["blue", "green", "small", "old", "new", "tall"]


def _glue_rows(task: str, rng: random.Random) -> tuple[list[str], object]:
  """One learnable row of ``task`` (the first sentence is filler, the second -- or the only
  one -- carries the label through a sentiment word) -> (its fields, its label)."""
  kind = rng.choice(["pos", "neg", "neutral"] if task == "mnli" else ["pos", "neg"])
  word = rng.choice({"pos": POSITIVE, "neg": NEGATIVE, "neutral": _NEUTRAL}[kind])
  s1 = " ".join(rng.sample(FILLER, 5))
  words = rng.sample(FILLER, 4) + [word]
  rng.shuffle(words)
  s2 = " ".join(words)
  label = {"sst2": int(kind == "pos"), "cola": int(kind == "pos"), "mrpc": int(kind == "pos"),
           "stsb": 4.5 if kind == "pos" else 0.5,
           "mnli": {"pos": "entailment", "neg": "contradiction", "neutral": "neutral"}[kind]}
  return [s1, s2], label[task]


def _write_glue(task: str, path: Path, n: int, seed: int) -> None:
  """GLUE's own TSV layouts (glue_data/*/train.tsv): headers, column order, headerless CoLA."""
  rng = random.Random(seed)
  lines = {"sst2": ["sentence\tlabel"], "cola": [],
           "mrpc": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"],
           "stsb": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                    "sentence2\tscore"],
           "mnli": ["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                    "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t"
                    "sentence2\tlabel1\tgold_label"]}[task]
  for i in range(n):
    (s1, s2), y = _glue_rows(task, rng)
    lines.append({
        "sst2": f"{s2}\t{y}", "cola": f"gj04\t{y}\t{'' if y else '*'}\t{s2}",
        "mrpc": f"{y}\t{i}\t{i + n}\t{s1}\t{s2}",
        "stsb": f"{i}\tmain-captions\tMSRvid\t2012test\t{i}\tnone\tnone\t{s1}\t{s2}\t{y}",
        "mnli": f"{i}\t{i}\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{s1}\t{s2}\t{y}\t{y}",
    }[task])
  path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("task,metric,bar,epochs", [
    ("sst2", "accuracy", 0.9, 6), ("cola", "mcc", 0.8, 6), ("mrpc", "f1", 0.9, 6),
    ("stsb", "pearson", 0.9, 6), ("mnli", "accuracy", 0.7, 10)])  # 3 classes: chance 1/3
def test_glue_presets_learn_on_their_real_formats(task, metric, bar, epochs, tiny_model,
                                                  tmp_path):
  """Each GLUE preset as shipped (format, columns, labels, task type, metric) reads files in
  GLUE's own layout and fine-tunes to the bar: single sentences, pairs, 3 classes, regression."""
  _write_glue(task, tmp_path / "train.tsv", 192, seed=0)
  _write_glue(task, tmp_path / "dev.tsv", 48, seed=1)
  summary = finetune(finetune_config(f"glue-{task}", [
      f"init_from={tiny_model}", f"run_dir={tmp_path / 'run'}",
      f"data.train={tmp_path / 'train.tsv'}", f"data.validation={tmp_path / 'dev.tsv'}",
      "data.max_seq_length=24", "data.buckets=[24]", "train.batch_size=16", f"train.epochs={epochs}",
      "train.seeds=[0]", "optim.learning_rate=3e-3"]), quiet=True)
  dev = summary["seeds"]["0"]["dev"]
  assert summary["metric"] == metric and dev[metric] >= bar, dev


def test_a_preempted_fine_tuning_resumes_to_the_same_summary(tiny_model, tmp_path):
  """Two seeds, stopped (SIGTERM's path) during the first; the same command again finishes both:
  the best checkpoints, per-seed results and summary.json equal a straight run's."""
  import threading
  import time

  train, dev = _sentiment(tmp_path, n_train=96, n_dev=32)
  args = ("train.epochs=3", "train.seeds=[0, 1]", "train.log_every=1")
  straight = finetune(_cfg("rt-polarity", tiny_model, tmp_path / "a", train, dev, *args),
                      quiet=True)
  run = tmp_path / "b"
  event = threading.Event()

  def stop_after_a_few_steps():
    rows = run / "seed-0" / "metrics.jsonl"
    while not event.is_set():
      if rows.exists() and rows.read_text().count('"split": "train"') >= 4:
        event.set()
      time.sleep(0.01)

  watcher = threading.Thread(target=stop_after_a_few_steps, daemon=True)
  watcher.start()
  first = finetune(_cfg("rt-polarity", tiny_model, run, train, dev, *args), quiet=True,
                   stop_event=event)
  event.set()
  assert first["preempted"] and not (run / "summary.json").exists()
  status = read_status(run)
  assert (status["state"], status["seed"], status["step"]) == ("preempted", 0, first["step"])
  resumed = finetune(_cfg("rt-polarity", tiny_model, run, train, dev, *args), quiet=True)
  assert read_status(run)["state"] == "completed"
  timing = ("train_seconds", "model", "tokens_per_second", "mfu")

  def strip(summary):  # what was learnt and measured, not how fast or where
    seeds = {seed: {m: ({k: v for k, v in val.items() if k not in timing}
                        if isinstance(val, dict) else val)
                    for m, val in r.items() if m not in timing}
             for seed, r in summary["seeds"].items()}
    return {**summary, "seeds": seeds}

  assert strip(resumed) == strip(straight)
  assert strip(json.loads((run / "summary.json").read_text())) == strip(straight)
  for seed in ("0", "1"):
    a = json.loads((tmp_path / "a" / f"seed-{seed}" / "best.json").read_text())
    b = json.loads((run / f"seed-{seed}" / "best.json").read_text())
    assert a == b


def test_ner_through_the_cli_finetune_evaluate_predict(tiny_model, tmp_path, capsys):
  """The commands a user types: finetune (JSON summary), evaluate (the same dev F1, with and
  without --task), predict (one row per sentence, its words' tags, >= 90% of them right)."""
  train, dev = _ner(tmp_path)
  run = tmp_path / "run"
  assert main(["finetune", "wnut16-ner", f"init_from={tiny_model}", f"run_dir={run}", "data.dataset=",
               f"data.train={train}", f"data.validation={dev}", "data.test=",
               "data.max_seq_length=24", "data.buckets=[24]", "optim.learning_rate=3e-3",
               "train.batch_size=16", "train.epochs=6"]) == 0
  summary = json.loads(capsys.readouterr().out)
  f1 = summary["seeds"]["0"]["dev"]["f1"]
  assert f1 >= 0.85 and summary == json.loads((run / "summary.json").read_text())
  for extra in ([], ["--task", "wnut16-ner"]):
    assert main(["evaluate", str(run), str(dev), *extra]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(f1)
  out = tmp_path / "pred.jsonl"
  assert main(["predict", str(run / "model"), str(dev), "--output", str(out)]) == 0
  assert json.loads(capsys.readouterr().out) == {"predictions": str(out), "examples": 48}
  preds = [json.loads(x) for x in out.read_text().splitlines()]
  gold = [block.split("\n") for block in dev.read_text().strip().split("\n\n")]
  assert [p["tokens"] for p in preds] == [[w.split("\t")[0] for w in g] for g in gold]
  right = [t == w.split("\t")[1] for p, g in zip(preds, gold) for t, w in zip(p["tags"], g)]
  assert len(right) == sum(len(g) for g in gold) and np.mean(right) >= 0.9


def test_multi_label_fine_tunes_end_to_end(tiny_model, tmp_path):
  """Rows carry any subset of {good, bad, place}: one sigmoid per label learns each."""
  rng = random.Random(3)
  for split, n in (("train", 256), ("dev", 48)):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        words, labels = rng.sample(FILLER, 4), []
        for label, pool in (("good", POSITIVE), ("bad", NEGATIVE), ("place", ["london", "paris"])):
          if rng.random() < 0.5:
            words.append(rng.choice(pool))
            labels.append(label)
        rng.shuffle(words)
        f.write(json.dumps({"text": " ".join(words), "label": labels}) + "\n")
  summary = finetune(_cfg("rt-polarity", tiny_model, tmp_path / "run", tmp_path / "train.jsonl",
                          tmp_path / "dev.jsonl", "task=multi_label", "data.labels=[]",
                          "data.dataset=", "data.test=", "train.epochs=24",
                          "optim.learning_rate=1e-3"), quiet=True)
  dev = summary["seeds"]["0"]["dev"]
  assert summary["labels"] == ["bad", "good", "place"]
  # chance: micro-F1 ~0.5, whole rows right 1/8 (measured here: 0.82 and 0.56)
  assert dev[summary["metric"]] >= 0.75 and dev["accuracy"] >= 0.4, dev
