"""Bad input a user can cause, on every command: exit code 2, one error line that names the
file, field or value at fault, no traceback -- and the run folder (or destination) exactly as
it was. Internal bugs are not caught (the CLI no longer turns every ValueError into a line)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from bertjax import cli
from bertjax.config import model_config
from bertjax.data.corpus import SHIPPED_TOKENIZERS
from bertjax.data.sources import CORPUS_DIR
from bertjax.data.tokenizer import Tokenizer
from bertjax.interop.hf import save_hf
from bertjax.model_dir import save_model_dir
from bertjax.models import Model
from bertjax.train.pretrain import pretrain
from pretrain_helpers import config, overrides, small_corpus


def snapshot(folder: Path) -> dict[str, str] | None:
  """Every file under ``folder`` with a hash of its bytes (None: the folder doesn't exist)."""
  if not folder.exists():
    return None
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Everything the commands read: a corpus, a finished run, model folders, task files."""
  root = tmp_path_factory.mktemp("bad")
  corpus = small_corpus(root / "corpus.txt", paragraphs=150)
  run = root / "run"
  pretrain(config(run, corpus, "train.steps=2", "checkpoint.every=2"), quiet=True)
  tok = Tokenizer.from_dir(CORPUS_DIR / SHIPPED_TOKENIZERS["corpus"])
  tiny = dict(family="bert", vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
              num_heads=2, intermediate_size=64, max_position_embeddings=64)
  save_model_dir(root / "mlm", Model(model_config({**tiny, "heads": ["mlm"]}), rngs=nnx.Rngs(0)),
                 tok)
  save_model_dir(root / "body", Model(model_config({**tiny, "heads": []}), rngs=nnx.Rngs(0)))
  save_model_dir(root / "clf", Model(model_config(
      {**tiny, "heads": ["classifier"], "labels": ["neg", "pos"]}), rngs=nnx.Rngs(0)), tok)
  save_hf(Model(model_config({**tiny, "heads": ["mlm"]}), rngs=nnx.Rngs(0)), root / "hf")
  # a model folder whose embedding table is smaller than its tokenizer (ids would be clamped)
  save_model_dir(root / "smallvocab", Model(model_config({**tiny, "vocab_size": 100,
                                                          "heads": ["mlm"]}), rngs=nnx.Rngs(0)),
                 tok)
  shutil.copytree(root / "hf", root / "layers")  # weights of 2 layers, a config.json of 1
  hf_config = json.loads((root / "hf" / "config.json").read_text())
  (root / "layers" / "config.json").write_text(json.dumps({**hf_config, "num_hidden_layers": 1}))
  texts = {
      "train.jsonl": ('{"text": "a good film", "label": "fresh"}\n'
                      '{"text": "bad", "label": "rotten"}\n'),
      "nolabel.jsonl": '{"text": "a good film"}\n{"text": "bad"}\n',
      "nulltext.jsonl": '{"text": "fine", "label": "fresh"}\n{"text": null, "label": "rotten"}\n',
      "badjson.jsonl": '{"text": "fine", "label": "fresh"}\n{"text": "oops",\n',
      "other.jsonl": '{"text": "a good film", "label": "meh"}\n',
      "qa.jsonl": json.dumps({"id": "q1", "question": "who?", "context": "Mary went home.",
                              "answers": [{"text": "Mary", "answer_start": 3}]}) + "\n",
      "squad.json": json.dumps({"data": [{"paragraphs": [{"qas": [
          {"id": "q1", "question": "who?", "answers": []}]}]}]}),
      "tags.jsonl": json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n",
      "cols.csv": "text,label\nfine,fresh\nbad,rotten,extra\n",
      "ner.conll": "john\tB-person\n\n",
      "preset-model5.yaml": "model: 5\n",
      "preset-model-name.yaml": "model: bert-base\n",
      "empty.txt": "",
      "nulltext-corpus.jsonl": '{"text": "Once upon a time."}\n{"text": null}\n',
  }
  for name, text in texts.items():
    (root / name).write_text(text)
  (root / "latin1.txt").write_bytes("Caf\u00e9 au lait.\n\nNa\u00efve.\n".encode("latin-1"))
  (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
  (root / "afile").write_text("not a folder")
  (root / "garbage").mkdir()
  (root / "garbage" / "config.json").write_text((root / "hf" / "config.json").read_text())
  (root / "garbage" / "model.safetensors").write_bytes(b"\x00" * 64)
  (root / "truncated").mkdir()
  shutil.copy(root / "hf" / "config.json", root / "truncated")
  data = (root / "hf" / "model.safetensors").read_bytes()
  (root / "truncated" / "model.safetensors").write_bytes(data[:len(data) // 2])
  (root / "badconfig").mkdir()
  (root / "badconfig" / "config.json").write_text("{not json")
  (root / "damaged").mkdir()
  shutil.copytree(root / "mlm", root / "damaged", dirs_exist_ok=True)
  for f in (root / "damaged" / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"")
  (root / "out-exists").mkdir()
  (root / "notamodel").mkdir()
  return root


def pretrain_args(world: Path, *extra: str, run: str = "run") -> list[str]:
  return ["pretrain", *overrides(world / run, world / "corpus.txt", "train.steps=2",
                                 "checkpoint.every=2", *extra)]


def finetune_args(world: Path, *extra: str, run: str = "ft-run") -> list[str]:
  return ["finetune", "rt-polarity", f"init_from={world / 'mlm'}", f"run_dir={world / run}",
          f"data.train={world / 'train.jsonl'}", f"data.validation={world / 'train.jsonl'}",
          "data.test=", "data.max_seq_length=32", *extra]


# (id, argv builder, the text the error line must contain, the folder that must not change)
CASES = [
    # pretrain: config
    ("pretrain-unknown-key", lambda w: pretrain_args(w, "train.stepz=3"), "train.stepz", "run"),
    ("pretrain-negative-steps", lambda w: pretrain_args(w, "train.steps=-1"), "train.steps", "run"),
    ("pretrain-bad-number", lambda w: pretrain_args(w, "optim.learning_rate=fast"),
     "optim.learning_rate", "run"),
    ("pretrain-bad-choice", lambda w: pretrain_args(w, "train.on_nonfinite=ignore"),
     "train.on_nonfinite", "run"),
    ("pretrain-unknown-preset", lambda w: ["pretrain", "bert-dmeo"], "bert-demo", "run"),
    ("pretrain-model-5", lambda w: ["pretrain", str(w / "preset-model5.yaml"),
                                    f"run_dir={w / 'run'}"], "model", "run"),
    ("pretrain-model-name", lambda w: ["pretrain", str(w / "preset-model-name.yaml"),
                                       f"run_dir={w / 'run'}"], "preset: bert-base", "run"),
    ("pretrain-accum-split", lambda w: pretrain_args(w, "train.grad_accum_steps=5"),
     "train.grad_accum_steps", "run"),
    ("pretrain-bad-keep", lambda w: pretrain_args(w, "checkpoint.keep=0"), "checkpoint.keep", "run"),
    # pretrain: mesh and batch
    ("pretrain-mesh-too-big", lambda w: pretrain_args(w, "mesh.data=16"), "mesh", "run"),
    ("pretrain-batch-vs-devices", lambda w: pretrain_args(w, "train.batch_size=12"),
     "train.batch_size=12", "run"),
    # pretrain: resuming with another meaning
    ("pretrain-resume-model", lambda w: pretrain_args(w, "model.num_layers=3"), "model.num_layers",
     "run"),
    ("pretrain-resume-lr", lambda w: pretrain_args(w, "optim.learning_rate=0.05"),
     "optim.learning_rate", "run"),
    ("pretrain-resume-data", lambda w: pretrain_args(w, "data.instances=sop"), "data.instances",
     "run"),
    ("pretrain-resume-seed", lambda w: pretrain_args(w, "train.seed=7"), "train.seed", "run"),
    # pretrain: data
    ("pretrain-preset-needs-source", lambda w: ["pretrain", "bert-base-pretrain",
                                                f"run_dir={w / 'run-new'}"],
     "data.source is not set", "run-new"),
    ("pretrain-preset-needs-tokenizer", lambda w: ["pretrain", "modernbert-large-pretrain",
                                                   "data.source=corpus",
                                                   f"run_dir={w / 'run-new'}"],
     "data.tokenizer is not set", "run-new"),
    ("prepare-preset-needs-source", lambda w: ["prepare-data", "bert-large-pretrain", "--out",
                                               str(w / "prep")], "data.source is not set", "prep"),
    ("pretrain-missing-source", lambda w: pretrain_args(w, f"data.source={w / 'nope.txt'}"),
     "nope.txt", "run"),
    ("pretrain-not-utf8", lambda w: pretrain_args(w, f"data.source={w / 'latin1.txt'}"),
     "latin1.txt:1", "run"),
    ("pretrain-null-text", lambda w: pretrain_args(
        w, f"data.source={w / 'nulltext-corpus.jsonl'}"), "nulltext-corpus.jsonl:2", "run"),
    ("pretrain-bad-jsonl", lambda w: pretrain_args(w, f"data.source={w / 'badjson.jsonl'}"),
     "badjson.jsonl:2", "run"),
    ("pretrain-empty-corpus", lambda w: pretrain_args(w, f"data.source={w / 'empty.txt'}"),
     "empty.txt", "run"),
    ("pretrain-missing-tokenizer", lambda w: pretrain_args(w, f"data.tokenizer={w / 'nope'}"),
     "nope", "run"),
    ("pretrain-eval-fraction", lambda w: pretrain_args(w, "data.eval_fraction=0"),
     "data.eval_fraction", "run"),
    # pretrain: starting points and objectives
    ("pretrain-init-from-missing", lambda w: pretrain_args(w, f"train.init_from={w / 'nope'}",
                                                           run="run-new"), "nope", "run-new"),
    ("pretrain-init-from-shapes", lambda w: pretrain_args(w, f"train.init_from={w / 'mlm'}",
                                                          run="run-new"),
     "train.init_from", "run-new"),
    ("pretrain-electra-no-generator", lambda w: pretrain_args(w, "objective=electra",
                                                              run="run-new"),
     "generator_width_fraction", "run-new"),
    ("pretrain-distill-no-teacher", lambda w: pretrain_args(w, "objective=distill", run="run-new"),
     "distill.teacher", "run-new"),
    # a vocabulary smaller than the tokenizer's ids, from every start
    ("pretrain-vocab-too-small", lambda w: pretrain_args(w, "model.vocab_size=1000",
                                                         run="run-new"),
     "8192 ids but the model's vocabulary (model.vocab_size) has 1000", "run-new"),
    ("pretrain-init-from-vocab", lambda w: pretrain_args(w, f"train.init_from={w / 'smallvocab'}",
                                                         run="run-new"),
     "has a vocabulary of 100 ids, this run's tokenizer 8192", "run-new"),
    ("pretrain-teacher-vocab", lambda w: pretrain_args(
        w, "objective=distill", f"distill.teacher={w / 'smallvocab'}", "distill.layers=[0]",
        run="run-new"), "8192 ids but the model's vocabulary (model.vocab_size) has 100",
     "run-new"),
    ("finetune-init-from-vocab", lambda w: finetune_args(w, f"init_from={w / 'smallvocab'}"),
     "8192 ids but the model's vocabulary (model.vocab_size) has 100", "ft-run"),
    ("embed-vocab", lambda w: ["embed", str(w / "smallvocab"), "hello"],
     "8192 ids but the model's vocabulary (model.vocab_size) has 100", "smallvocab"),
    ("fill-mask-vocab", lambda w: ["fill-mask", str(w / "smallvocab"), "a [MASK] b"],
     "8192 ids but the model's vocabulary (model.vocab_size) has 100", "smallvocab"),
    ("pretrain-run-dir-under-file", lambda w: pretrain_args(w, run="afile/run"), "afile",
     "afile"),
    # prepare-data
    ("prepare-out-exists", lambda w: ["prepare-data", f"data.source={w / 'corpus.txt'}", "--out",
                                      str(w / "out-exists")], "already exists", "out-exists"),
    ("prepare-bad-key", lambda w: ["prepare-data", "data.sorce=x", "--out", str(w / "prep")],
     "data.sorce", "prep"),
    ("prepare-beam-workers", lambda w: ["prepare-data", f"data.source={w / 'corpus.txt'}",
                                        "--out", str(w / "prep"), "--beam", "", "--workers", "2"],
     "--beam runs on the runner's workers", "prep"),
    ("prepare-beam-shard", lambda w: ["prepare-data", f"data.source={w / 'corpus.txt'}",
                                      "--out", str(w / "prep"), "--beam", "", "--shard", "0/2"],
     "drop --workers and --shard", "prep"),
    ("prepare-poll-zero", lambda w: ["prepare-data", f"data.source={w / 'corpus.txt'}", "--out",
                                     str(w / "prep"), "--poll-seconds", "0"], "--poll-seconds",
     "prep"),
    ("prepare-missing-source", lambda w: ["prepare-data", f"data.source={w / 'nope.txt'}",
                                          "--out", str(w / "prep")], "nope.txt", "prep"),
    # finetune
    ("finetune-no-init-from", lambda w: ["finetune", "rt-polarity", "init_from=",
                                         f"run_dir={w / 'ft-run'}"], "init_from", "ft-run"),
    ("finetune-missing-train", lambda w: finetune_args(w, f"data.train={w / 'nope.jsonl'}"),
     "nope.jsonl", "ft-run"),
    ("finetune-no-label", lambda w: finetune_args(w, f"data.train={w / 'nolabel.jsonl'}"),
     "nolabel.jsonl:1", "ft-run"),
    ("finetune-null-text", lambda w: finetune_args(w, f"data.train={w / 'nulltext.jsonl'}"),
     "nulltext.jsonl:2", "ft-run"),
    ("finetune-unknown-eval-label", lambda w: finetune_args(
        w, f"data.validation={w / 'other.jsonl'}"), "other.jsonl:1", "ft-run"),
    ("finetune-qa-span", lambda w: finetune_args(
        w, "task=qa", f"data.train={w / 'qa.jsonl'}", f"data.validation={w / 'qa.jsonl'}"),
     "qa.jsonl:1", "ft-run"),
    ("finetune-squad-no-context", lambda w: finetune_args(
        w, "task=qa", f"data.train={w / 'squad.json'}", f"data.validation={w / 'squad.json'}"),
     "context", "ft-run"),
    ("finetune-tags-length", lambda w: finetune_args(
        w, "task=token_classification", f"data.train={w / 'tags.jsonl'}",
        f"data.validation={w / 'tags.jsonl'}"), "tags.jsonl:1", "ft-run"),
    ("finetune-csv-columns", lambda w: finetune_args(w, f"data.train={w / 'cols.csv'}"),
     "cols.csv:3", "ft-run"),
    ("finetune-conll-for-classes", lambda w: finetune_args(w, f"data.train={w / 'ner.conll'}"),
     "CoNLL", "ft-run"),
    ("finetune-bad-metric", lambda w: finetune_args(w, "train.metric=bleu"), "train.metric",
     "ft-run"),
    ("finetune-unknown-key", lambda w: finetune_args(w, "train.epoch=3"), "train.epochs",
     "ft-run"),
    ("finetune-batch-vs-devices", lambda w: finetune_args(w, "train.batch_size=6"),
     "train.batch_size=6", "ft-run"),
    ("finetune-init-from-missing", lambda w: finetune_args(w, f"init_from={w / 'nope'}"), "nope",
     "ft-run"),
    # evaluate / predict
    ("evaluate-unlabelled", lambda w: ["evaluate", str(w / "clf"), str(w / "nolabel.jsonl")],
     "no labels", "clf"),
    ("evaluate-missing-file", lambda w: ["evaluate", str(w / "clf"), str(w / "nope.jsonl")],
     "nope.jsonl", "clf"),
    ("evaluate-no-task-head", lambda w: ["evaluate", str(w / "mlm"), str(w / "train.jsonl")],
     "task head", "mlm"),
    ("predict-output-folder", lambda w: ["predict", str(w / "clf"), str(w / "train.jsonl"),
                                         "--output", str(w / "out-exists")], "--output",
     "out-exists"),
    ("predict-batch-size", lambda w: ["predict", str(w / "clf"), str(w / "train.jsonl"),
                                      "--output", str(w / "p.jsonl"), "--batch-size", "0"],
     "--batch-size", "clf"),
    # import-hf / export-hf
    ("import-missing", lambda w: ["import-hf", str(w / "nope"), str(w / "imp")], "config.json",
     "imp"),
    ("import-garbage-safetensors", lambda w: ["import-hf", str(w / "garbage"), str(w / "imp")],
     "model.safetensors", "imp"),
    ("import-truncated-safetensors", lambda w: ["import-hf", str(w / "truncated"),
                                                str(w / "imp")], "model.safetensors", "imp"),
    ("import-bad-config", lambda w: ["import-hf", str(w / "badconfig"), str(w / "imp")],
     "config.json", "imp"),
    ("import-dst-exists", lambda w: ["import-hf", str(w / "hf"), str(w / "out-exists")],
     "already exists", "out-exists"),
    ("import-weights-vs-config", lambda w: ["import-hf", str(w / "layers"), str(w / "imp")],
     "the weights hold 2 layers, config.json says 1; unexpected keys: ", "imp"),
    ("export-not-a-model", lambda w: ["export-hf", str(w / "notamodel"), str(w / "exp")],
     "notamodel", "exp"),
    ("export-damaged-params", lambda w: ["export-hf", str(w / "damaged"), str(w / "exp")],
     "params", "exp"),
    # embed / fill-mask
    ("embed-missing-model", lambda w: ["embed", str(w / "nope"), "hello"], "nope", "mlm"),
    ("embed-layer-range", lambda w: ["embed", str(w / "mlm"), "hello", "--layer", "9"],
     "--layer 9", "mlm"),
    ("embed-bad-pooling", lambda w: ["embed", str(w / "mlm"), "hello", "--pooling", "max"],
     "--pooling", "mlm"),
    ("embed-no-tokenizer", lambda w: ["embed", str(w / "body"), "hello"], "tokenizer", "body"),
    ("embed-missing-input", lambda w: ["embed", str(w / "mlm"), "--input", str(w / "no.jsonl")],
     "no.jsonl", "mlm"),
    ("embed-null-text-mid-file", lambda w: ["embed", str(w / "mlm"), "--input",
                                            str(w / "nulltext.jsonl"), "--output", str(w / "e.npy")],
     "nulltext.jsonl:2", "e.npy"),
    ("embed-texts-and-input", lambda w: ["embed", str(w / "mlm"), "hi", "--input",
                                         str(w / "train.jsonl")], "--input", "mlm"),
    ("embed-output-suffix", lambda w: ["embed", str(w / "mlm"), "hi", "--output", str(w / "e.txt")],
     "e.txt", "e.txt"),
    ("fill-mask-top-k", lambda w: ["fill-mask", str(w / "mlm"), "a [MASK] b", "--top-k", "-3"],
     "--top-k", "mlm"),
    ("fill-mask-no-mask", lambda w: ["fill-mask", str(w / "mlm"), "no mask here"], "[MASK]", "mlm"),
    ("fill-mask-no-mlm-head", lambda w: ["fill-mask", str(w / "clf"), "a [MASK] b"], "MLM head",
     "clf"),
    # train-tokenizer
    ("tokenizer-binary", lambda w: ["train-tokenizer", str(w / "binary.bin"), "--out",
                                    str(w / "tok")], "binary.bin:2: not UTF-8", "tok"),
    ("tokenizer-vocab-zero", lambda w: ["train-tokenizer", str(w / "corpus.txt"), "--out",
                                        str(w / "tok"), "--vocab-size", "0"], "--vocab-size",
     "tok"),
    ("tokenizer-vocab-tiny", lambda w: ["train-tokenizer", str(w / "corpus.txt"), "--out",
                                        str(w / "tok"), "--vocab-size", "5"], "--vocab-size",
     "tok"),
    ("tokenizer-missing-file", lambda w: ["train-tokenizer", str(w / "nope.txt"), "--out",
                                          str(w / "tok")], "nope.txt", "tok"),
    ("tokenizer-out-is-file", lambda w: ["train-tokenizer", str(w / "corpus.txt"), "--out",
                                         str(w / "afile")], "afile", "afile"),
] + [(f"tokenizer-empty-{kind}", lambda w, kind=kind: [
    "train-tokenizer", str(w / "empty.txt"), "--out", str(w / "tok"), "--kind", kind],
    "empty.txt holds no text", "tok") for kind in ("wordpiece", "bpe", "sentencepiece")]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(case, world, capsys):
  name, argv, culprit, watched = case
  argv = argv(world)
  watched = world / watched
  before = snapshot(watched) if watched.is_dir() else watched.read_bytes() \
      if watched.exists() else None
  capsys.readouterr()
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.startswith("bertjax ")]
  errors = [line for line in lines if ": error: " in line]
  assert len(errors) == 1, err
  assert errors[0].startswith(f"bertjax {argv[0]}: error: "), errors
  assert culprit in errors[0], errors[0]
  assert len(errors[0]) <= 400, errors[0]  # says what is wrong, not everything it saw
  after = snapshot(watched) if watched.is_dir() else watched.read_bytes() \
      if watched.exists() else None
  assert after == before, f"{watched} changed"
  assert not list(world.glob("**/*.partial")) and not list(world.glob("**/.*.partial"))
  assert not (world / "run" / "run.lock").exists()


def test_an_internal_bug_keeps_its_traceback(world, monkeypatch):
  """Only user errors become one line: a bug inside the library propagates."""
  import bertjax.inference as inference

  def broken(*a, **k):
    raise ValueError("an internal bug")

  monkeypatch.setattr(inference.Embedder, "encode", broken)
  with pytest.raises(ValueError, match="an internal bug"):
    cli.main(["embed", str(world / "mlm"), "hello"])


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_disk_is_one_line(world, monkeypatch, capsys, wrapped):
  """ENOSPC, raw or deep in another library's exception chain, is one line naming the file."""
  import errno

  import bertjax.data.train_tokenizer as tt

  def full(*a, **k):
    disk = OSError(errno.ENOSPC, "No space left on device", str(world / "tok" / "vocab.txt"))
    if not wrapped:
      raise disk
    raise RuntimeError("write failed") from disk

  monkeypatch.setattr(tt, "_train", full)
  assert cli.main(["train-tokenizer", str(world / "corpus.txt"), "--out", str(world / "tok")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "no space left on device" in err and "vocab.txt" in err
  assert not (world / "tok").exists() and not list(world.glob(".tok.partial"))


def test_the_battery_covers_every_command():
  commands = {c[1](Path("/w"))[0] for c in CASES}
  assert commands == {"pretrain", "prepare-data", "finetune", "evaluate", "predict", "import-hf",
                      "export-hf", "embed", "fill-mask", "train-tokenizer"}
  assert len(CASES) >= 40
  assert np.unique([c[0] for c in CASES]).size == len(CASES)
  # the docs' figure (the pretraining guide) is this battery's, not a number from memory
  guide = (Path(__file__).resolve().parent.parent / "docs" / "pretraining.md").read_text()
  assert f"runs {len(CASES)} such cases over {len(commands)} commands" in " ".join(guide.split())
