"""task: sentence_embedding end to end: the shipped pairs, retrieval metrics, a contrastive run
on the engine, `bertjax evaluate` on a BEIR folder / pairs / STS, and sentence-transformers
folders out (embeddings equal to `bertjax embed`'s) and in (its pooling picked up)."""

import json
import math

import numpy as np
import pytest

from bertjax import cli
from bertjax.config import finetune_config
from bertjax.data import book_pairs
from bertjax.interop import export_hf, import_hf
from bertjax.model_dir import read_model_config
from bertjax.tasks.finetune import finetune
from bertjax.tasks.retrieval import read_beir, retrieval_metrics, write_beir


def test_the_shipped_pairs_are_what_the_builder_makes():
  built = book_pairs.book_pairs()
  for split, rows in built.items():
    shipped = [json.loads(x) for x in (book_pairs.OUT / f"{split}.jsonl").read_text().splitlines()]
    assert shipped == rows and len(rows) == book_pairs.SIZES[split]
    assert all(r["anchor"] not in r["positive"] for r in rows)  # the sentence was taken out
  positives = {split: {r["positive"] for r in rows} for split, rows in built.items()}
  assert not positives["train"] & positives["test"] and not positives["train"] & positives["validation"]


def test_retrieval_metrics_by_hand():
  docs = np.eye(4, dtype=np.float32)
  queries = np.array([[1, .1, 0, 0],       # ranks d0 d1 ..: its d0 first
                      [.05, .2, 1, .1],    # ranks d2 d1 d3 d0: d1 (grade 2) 2nd, d3 (grade 1) 3rd
                      [.3, 0, .1, 1]], np.float32)  # ranks d3 d0 d2 d1: its d2 3rd
  relevant = [{0: 1.0}, {1: 2.0, 3: 1.0}, {2: 1.0}]
  m = retrieval_metrics(queries, docs, relevant)
  assert m["recall_at_1"] == pytest.approx(1 / 3)
  assert m["recall_at_10"] == pytest.approx(1.0)
  assert m["mrr_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
  q1 = (2 / math.log2(3) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
  assert m["ndcg_at_10"] == pytest.approx((1 + q1 + 1 / math.log2(4)) / 3)


@pytest.fixture(scope="module")
def embedding_run(straight_run, tmp_path_factory):
  """The 8-step pretraining run's model, trained contrastively on the shipped pairs."""
  start, _ = straight_run
  run = tmp_path_factory.mktemp("embedding") / "run"
  cfg = finetune_config("book-pairs", [
      f"init_from={start}/model", f"run_dir={run}", "train.epochs=0.15", "train.batch_size=32",
      "train.eval_batch_size=32", "optim.learning_rate=1e-3", "data.max_seq_length=48",
      "train.log_every=4", "embedding.chunk=8"])
  return run, finetune(cfg, quiet=True)


def test_contrastive_training_on_the_engine(embedding_run):
  run, summary = embedding_run
  seed = summary["seeds"]["0"]
  assert seed["steps"] == math.ceil(0.15 * (3000 // 32))
  assert set(summary["median_dev"]) >= {"recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10"}
  assert summary["median_dev_at_start"]["queries"] == 300
  rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert losses[-1] < losses[0]  # the in-batch ranking loss goes down
  cfg = read_model_config(run / "model")
  assert cfg.sentence_pooling == "mean" and cfg.sentence_normalize and not cfg.heads


def test_evaluate_reads_beir_pairs_and_sts(embedding_run, tmp_path, capsys):
  run, _ = embedding_run
  pairs = [json.loads(x) for x in (book_pairs.OUT / "test.jsonl").read_text().splitlines()][:40]
  beir = write_beir(tmp_path / "beir", [p["positive"] for p in pairs], [p["anchor"] for p in pairs],
                    [{i: 1.0} for i in range(len(pairs))])
  docs, queries, relevant = read_beir(str(beir))
  assert len(docs) == len(queries) == 40 and relevant[3] == {3: 1.0}
  assert cli.main(["evaluate", str(run), str(beir)]) == 0
  from_beir = json.loads(capsys.readouterr().out)
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
  assert cli.main(["evaluate", str(run), str(tmp_path / "pairs.jsonl")]) == 0
  from_pairs = json.loads(capsys.readouterr().out)
  for key in ("recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10"):
    assert from_beir[key] == pytest.approx(from_pairs[key])
  sts = tmp_path / "sts.jsonl"  # a pair scores higher with itself than with another text
  sts.write_text("".join(json.dumps({"sentence1": p["anchor"], "sentence2": q, "score": s}) + "\n"
                         for p in pairs[:20] for q, s in ((p["anchor"], 5.0), (pairs[-1]["positive"], 0.0))))
  assert cli.main(["evaluate", str(run), str(sts)]) == 0
  assert json.loads(capsys.readouterr().out)["spearman"] > 0.8


def test_sentence_transformers_folder_out_and_in(embedding_run, tmp_path, capsys):
  from sentence_transformers import SentenceTransformer

  run, _ = embedding_run
  out = export_hf(run / "model", tmp_path / "st")
  assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
  texts = ["It will certainly be much the best way.", "The river ran under the old bridge.",
           "She said nothing more."]
  theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
  assert cli.main(["embed", str(run / "model"), *texts]) == 0
  ours = np.array([json.loads(x)["embedding"] for x in capsys.readouterr().out.splitlines()])
  assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # normalised, as ST is
  assert np.abs(ours - theirs).max() <= 1e-5
  cfg = import_hf(out, tmp_path / "back")
  assert cfg.sentence_pooling == "mean" and cfg.sentence_normalize
