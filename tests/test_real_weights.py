"""Real pretrained weights through the CLI: all-MiniLM-L6-v2 (embed) and a BERT-Tiny MLM with
legacy LayerNorm.gamma/beta keys (fill-mask), each within 1e-4 of transformers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from bertjax import cli
from bertjax.model_dir import load_model_dir
from bertjax.inference import encode_with_masks, forward, pad_batch

import weights

SENTENCES = ["A man is eating food.", "The quick brown fox jumps over the lazy dog!",
             "JAX compiles NumPy programs with XLA."]


def minilm_dir() -> Path:
  return weights.minilm()  # digests checked


def bert_tiny_dir() -> Path:
  return weights.bert_tiny()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
  dst = tmp_path_factory.mktemp("ck") / "minilm"
  assert cli.main(["import-hf", str(minilm_dir()), str(dst)]) == 0
  return dst


def hf_hidden(path, texts):
  tok = T.AutoTokenizer.from_pretrained(path)
  model = T.AutoModel.from_pretrained(path).eval()
  batch = tok(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    out = model(**batch, output_hidden_states=True)
  return out, batch["attention_mask"].numpy()


def test_minilm_mean_pooled_embeddings_match(minilm, tmp_path):
  out_file = tmp_path / "emb.npy"
  assert cli.main(["embed", str(minilm), *SENTENCES, "--pooling", "mean",
                   "--output", str(out_file)]) == 0
  ours = np.load(out_file)
  hf, mask = hf_hidden(minilm_dir(), SENTENCES)
  h = hf.last_hidden_state.numpy()
  ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert ours.shape == (3, 384)
  assert np.max(np.abs(ours - ref)) <= 1e-4
  # sentence-transformers normalises these; the semantic ordering holds on the raw vectors too
  cos = (ours / np.linalg.norm(ours, axis=1, keepdims=True)) @ (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
  assert np.allclose(np.diag(cos), 1.0, atol=1e-5)


def test_streamed_file_embeddings_equal_transformers_in_input_order(minilm, tmp_path):
  """--input JSONL / text lines, more texts than a batch and several length buckets: vectors in
  input order, within 1e-5 of transformers' mean-pooled MiniLM; .npy and .jsonl agree."""
  rng = np.random.default_rng(0)
  words = "the a river town house walked slowly under bright grey sky of old london".split()
  texts = [" ".join(rng.choice(words, int(rng.integers(1, 60)))) for _ in range(70)]
  jsonl, lines = tmp_path / "in.jsonl", tmp_path / "in.txt"
  jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
  lines.write_text("".join(t + "\n" for t in texts))
  assert cli.main(["embed", str(minilm), "--input", str(jsonl), "--batch-size", "16", "--pooling", "mean",
                   "--output", str(tmp_path / "a.npy")]) == 0
  assert cli.main(["embed", str(minilm), "--input", str(lines), "--batch-size", "8", "--pooling", "mean",
                   "--output", str(tmp_path / "b.jsonl")]) == 0
  ours = np.load(tmp_path / "a.npy")
  rows = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
  assert [r["text"] for r in rows] == texts
  assert np.max(np.abs(np.array([r["embedding"] for r in rows]) - ours)) <= 1e-5
  ref = []
  for i in range(0, len(texts), 10):
    hf, mask = hf_hidden(minilm_dir(), texts[i:i + 10])
    h = hf.last_hidden_state.numpy()
    ref.append((h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))
  assert ours.shape == (70, 384)
  assert np.max(np.abs(ours - np.concatenate(ref))) <= 1e-5


def test_embed_reads_another_field_and_truncates(minilm, tmp_path):
  """--field names the JSONL key; --max-length cuts every text to that many tokens ([CLS] and
  [SEP] included): equal to transformers' mean pooling over the truncated ids."""
  texts = ["a man walked slowly under the bright grey sky of old london town",
           "the river", "houses of the town by the river in the old country side"]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps({"body": t, "text": "ignored"}) + "\n" for t in texts))
  assert cli.main(["embed", str(minilm), "--input", str(src), "--field", "body", "--pooling", "mean",
                   "--max-length", "6", "--output", str(tmp_path / "e.npy")]) == 0
  ours = np.load(tmp_path / "e.npy")
  tok = T.AutoTokenizer.from_pretrained(minilm_dir())
  enc = tok(texts, padding=True, truncation=True, max_length=6, return_tensors="pt")
  with torch.no_grad():
    h = T.AutoModel.from_pretrained(minilm_dir()).eval()(**enc).last_hidden_state.numpy()
  mask = enc["attention_mask"].numpy()
  assert mask.sum(1).tolist() == [6, 4, 6]
  ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert np.max(np.abs(ours - ref)) <= 1e-5


def test_per_token_embeddings_load_without_pickle(minilm, tmp_path):
  """--pooling none: one .npz, padded [n, len, hidden] + mask; np.load needs no allow_pickle."""
  out_file = tmp_path / "tokens.npz"
  assert cli.main(["embed", str(minilm), *SENTENCES, "--pooling", "none",
                   "--output", str(out_file)]) == 0
  with np.load(out_file) as f:  # allow_pickle defaults to False
    emb, mask = f["embeddings"], f["mask"]
  hf, hf_mask = hf_hidden(minilm_dir(), SENTENCES)
  assert emb.shape == (3, hf_mask.shape[1], 384) and np.array_equal(mask, hf_mask.astype(bool))
  assert np.max(np.abs((emb - hf.last_hidden_state.numpy()) * mask[..., None])) <= 1e-4
  assert not emb[~mask].any()  # padding rows are zeros
  assert cli.main(["embed", str(minilm), "hi", "--pooling", "none", "--output",
                   str(tmp_path / "x.npy")]) == 2  # a one-line error: it must be .npz


def test_minilm_hidden_states_match_at_every_layer(minilm):
  model, tokenizer = load_model_dir(minilm)
  hf, mask = hf_hidden(minilm_dir(), SENTENCES)
  batch = pad_batch([tokenizer.encode(s) for s in SENTENCES], tokenizer.pad_id)
  ours = forward(model, batch).hidden_states
  assert len(ours) == len(hf.hidden_states) == 7
  for a, b in zip(ours, hf.hidden_states):
    assert np.max(np.abs((np.asarray(a) - b.numpy()) * mask[..., None])) <= 1e-4


def test_embed_prints_json_lines_for_cls_and_layer(minilm, capsys):
  assert cli.main(["embed", str(minilm), *SENTENCES[:2], "--pooling", "cls", "--layer", "3"]) == 0
  rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  hf, _ = hf_hidden(minilm_dir(), SENTENCES[:2])
  assert [r["text"] for r in rows] == SENTENCES[:2]
  for i, r in enumerate(rows):
    assert np.max(np.abs(np.array(r["embedding"]) - hf.hidden_states[3][i, 0].numpy())) <= 1e-4


def test_bert_tiny_fill_mask_logits_match(tmp_path, capsys):
  dst = tmp_path / "tiny"
  assert cli.main(["import-hf", str(bert_tiny_dir()), str(dst)]) == 0
  capsys.readouterr()
  text = "The capital of France is [MASK] and the [MASK] is blue."
  assert cli.main(["fill-mask", str(dst), text, "--top-k", "5"]) == 0
  result = json.loads(capsys.readouterr().out)
  tok = T.AutoTokenizer.from_pretrained(bert_tiny_dir())
  hf = T.BertForMaskedLM.from_pretrained(bert_tiny_dir()).eval()
  batch = tok(text, return_tensors="pt")
  with torch.no_grad():
    logits = hf(**batch).logits[0].numpy()
  positions = [i for i, t in enumerate(batch["input_ids"][0].tolist()) if t == tok.mask_token_id]
  assert [r["position"] for r in result] == positions
  for r in result:
    ref = logits[r["position"]]
    top = np.argsort(-ref)[:5]
    assert [p["id"] for p in r["predictions"]] == top.tolist()
    for p in r["predictions"]:
      assert abs(p["logit"] - ref[p["id"]]) <= 1e-4
  # and the whole logit table, through the library
  model, tokenizer = load_model_dir(dst)
  enc = encode_with_masks(tokenizer, text)
  assert enc.ids == batch["input_ids"][0].tolist()
  ours = np.asarray(forward(model, pad_batch([enc], tokenizer.pad_id)).mlm_logits[0])
  assert np.max(np.abs(ours - logits)) <= 1e-4
