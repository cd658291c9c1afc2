"""What embedding users read: retrieval metrics over a corpus (recall@k, MRR@10, nDCG@10, as
BEIR/MTEB report them through trec_eval) and STS (Spearman of cosine vs gold scores), plus
the files those benchmarks ship: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and a qrels TSV (``query-id``, ``corpus-id``, ``score``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from bertjax import storage
from bertjax.data.sources import read_jsonl
from bertjax.errors import UserError


class RetrievalDataError(UserError):
  """An unreadable BEIR folder or STS file; names the file and line."""


def normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rank(queries: np.ndarray, docs: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
  """[nq, k] indices of each query's k most cosine-similar documents, best first."""
  q, d = normalize(np.asarray(queries, np.float32)), normalize(np.asarray(docs, np.float32))
  k = min(k, len(d))
  out = np.empty((len(q), k), np.int64)
  for s in range(0, len(q), block):
    scores = q[s:s + block] @ d.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    out[s:s + block] = np.take_along_axis(top, order, 1)
  return out


def retrieval_metrics(queries: np.ndarray, docs: np.ndarray,
                      relevant: list[dict[int, float]]) -> dict[str, float]:
  """recall@1/10, MRR@10 and nDCG@10 (trec_eval's: gain = relevance, discount log2(rank+1)),
  averaged over the queries; ``relevant[i]`` maps document index -> relevance (> 0)."""
  top = rank(queries, docs, 10)
  recall1, recall10, mrr, ndcg = [], [], [], []
  for hits, rel in zip(top, relevant):
    positive = {d for d, r in rel.items() if r > 0}
    if not positive:
      continue
    recall1.append(len(positive & set(hits[:1].tolist())) / len(positive))
    recall10.append(len(positive & set(hits.tolist())) / len(positive))
    first = next((i for i, h in enumerate(hits.tolist()) if h in positive), None)
    mrr.append(0.0 if first is None else 1.0 / (first + 1))
    dcg = sum(rel.get(h, 0.0) / math.log2(i + 2) for i, h in enumerate(hits.tolist()))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:10]
    ndcg.append(dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal)))
  if not recall1:
    raise RetrievalDataError("no query has a relevant document")
  return {"recall_at_1": float(np.mean(recall1)), "recall_at_10": float(np.mean(recall10)),
          "mrr_at_10": float(np.mean(mrr)), "ndcg_at_10": float(np.mean(ndcg)),
          "queries": len(recall1)}


def pair_metrics(embed, rows: list[dict]) -> dict[str, float]:
  """Each row's anchor retrieves its own positive among all the rows' positives; ``embed`` maps
  a list of texts to vectors."""
  return retrieval_metrics(embed([r["anchor"] for r in rows]), embed([r["positive"] for r in rows]),
                           [{i: 1.0} for i in range(len(rows))])


def sts_spearman(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
  """Spearman (and Pearson) correlation of cos(a_i, b_i) with the gold scores (MTEB's STS)."""
  from scipy import stats

  cos = (normalize(a) * normalize(b)).sum(-1)
  return {"spearman": float(stats.spearmanr(cos, gold).statistic),
          "pearson": float(stats.pearsonr(cos, gold).statistic), "pairs": len(gold)}


# -- files --------------------------------------------------------------------------------------


def is_beir_folder(path: str) -> bool:
  p = storage.as_path(path)
  return (p / "corpus.jsonl").exists() and (p / "queries.jsonl").exists()


def read_beir(path: str, split: str = "test") -> tuple[list[str], list[str], list[dict[int, float]]]:
  """A BEIR folder -> (document texts, query texts, per-query {document index: relevance}).
  A document's text is its title and text joined by a space, as BEIR's models read it."""
  root = storage.as_path(path)
  doc_ids, docs = {}, []
  for n, row in read_jsonl(root / "corpus.jsonl", RetrievalDataError):
    where = f"{root / 'corpus.jsonl'}:{n}"
    if "_id" not in row or not isinstance(row.get("text"), str):
      raise RetrievalDataError(f"{where}: a corpus row needs '_id' and a string 'text'")
    doc_ids[str(row["_id"])] = len(docs)
    docs.append(" ".join(t for t in (row.get("title") or "", row["text"]) if t))
  query_ids, queries = {}, []
  for n, row in read_jsonl(root / "queries.jsonl", RetrievalDataError):
    if "_id" not in row or not isinstance(row.get("text"), str):
      raise RetrievalDataError(f"{root / 'queries.jsonl'}:{n}: a query row needs '_id' and a "
                               "string 'text'")
    query_ids[str(row["_id"])] = len(queries)
    queries.append(row["text"])
  qrels_path = root / "qrels" / f"{split}.tsv"
  if not qrels_path.exists():
    raise RetrievalDataError(f"{qrels_path}: missing (BEIR keeps the labels in qrels/SPLIT.tsv)")
  relevant: list[dict[int, float]] = [{} for _ in queries]
  with qrels_path.open(encoding="utf-8", newline="") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  for n, row in enumerate(rows, 1):
    if n == 1 and row[:2] == ["query-id", "corpus-id"]:
      continue
    if len(row) != 3:
      raise RetrievalDataError(f"{qrels_path}:{n}: expected query-id, corpus-id, score")
    q, d, score = row
    if q not in query_ids or d not in doc_ids:
      raise RetrievalDataError(f"{qrels_path}:{n}: unknown {'query' if q not in query_ids else 'document'} "
                               f"id {q if q not in query_ids else d!r}")
    try:
      relevant[query_ids[q]][doc_ids[d]] = float(score)
    except ValueError:
      raise RetrievalDataError(f"{qrels_path}:{n}: score {score!r} is not a number") from None
  keep = [i for i, rel in enumerate(relevant) if any(r > 0 for r in rel.values())]
  return docs, [queries[i] for i in keep], [relevant[i] for i in keep]


def write_beir(path: str | Path, docs: list[str], queries: list[str],
               relevant: list[dict[int, float]], split: str = "test") -> Path:
  """The inverse of ``read_beir`` (documents d0.., queries q0..)."""
  import json

  root = Path(path)
  (root / "qrels").mkdir(parents=True, exist_ok=True)
  (root / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs)))
  (root / "queries.jsonl").write_text("".join(
      json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries)))
  lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{d}\t{int(r)}" for i, rel in
                                           enumerate(relevant) for d, r in rel.items()]
  (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
  return root
