"""Family recipes held to their original code (within 3 sigma), and every family preset learns
context in the one engine (held-out MLM loss below the token-frequency baseline)."""

import math

import numpy as np
import pytest

from bertjax.config import experiment_config
from bertjax.data.instances import Instance
from bertjax.data.masking import (MaskingSpec, SpanSpec, _select_ngrams, ngram_probabilities,
                                  span_lengths_distribution, span_mask_instance)
from bertjax.train.pretrain import pretrain

from pretrain_helpers import patterned_corpus, small_corpus, train_losses
from test_masking import sigma3

MASK = 4


def words_instance(n=256, word_len=1, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(10, 1000, n).astype(np.int32)
  special = np.zeros(n, bool)
  special[[0, -1]] = True
  starts = np.zeros(n, bool)
  starts[::word_len] = True
  return Instance(ids, starts, np.zeros(n, np.int8), special)


def test_ngram_lengths_follow_one_over_n():
  assert np.allclose(ngram_probabilities(3), [6 / 11, 3 / 11, 2 / 11])
  counts = np.zeros(3)
  for i in range(3000):
    words = [np.array([k]) for k in range(1, 200)]  # one-token words, budget never binds first
    first = _select_ngrams(words, budget=30, max_n=3, rng=np.random.default_rng([3, i]))
    runs = np.split(first, np.flatnonzero(np.diff(first) != 1) + 1)
    counts[min(len(runs[0]), 3) - 1] += 1  # first gram (possibly merged with a neighbour: rare)
  total = counts.sum()
  for n, p in enumerate(ngram_probabilities(3)):
    assert abs(counts[n] / total - p) <= sigma3(p, total) + 0.02


def test_modernbert_masks_30_percent():
  from bertjax.data.masking import select_positions

  spec = MaskingSpec(mask_id=MASK, vocab_size=1000, max_predictions=200, mask_rate=0.3)
  for n in (64, 128, 255):
    x = words_instance(n=n)
    assert len(select_positions(x, spec, np.random.default_rng(n))) == round(n * 0.3)


def test_sop_single_chunk_documents_can_be_dropped():
  from bertjax.data.instances import Specials, nsp_instances

  one_sentence_docs = [[(np.arange(10, 40, dtype=np.int32), np.ones(30, bool))] for _ in range(50)]
  kw = dict(max_seq_length=64, short_seq_prob=0.0, sop=True)
  kept = nsp_instances(one_sentence_docs, Specials(2, 3), rng=np.random.default_rng(0), **kw)
  dropped = nsp_instances(one_sentence_docs, Specials(2, 3), rng=np.random.default_rng(0),
                          sop_single_chunk="drop", **kw)
  assert len(kept) == 50 and all(x.label == 1 for x in kept) and dropped == []


def test_span_lengths_follow_the_clipped_geometric():
  span = SpanSpec(0.2, 10)
  p = span_lengths_distribution(span)
  assert np.isclose(p.sum(), 1) and np.allclose(p[1:] / p[:-1], 0.8)
  spec = MaskingSpec(mask_id=MASK, vocab_size=1000, max_predictions=1000, mask_rate=0.15)
  hist = np.zeros(10)
  for i in range(2000):
    x = words_instance(n=400, word_len=2, seed=i)
    ids, pos, _, w, sbo = span_mask_instance(x, spec, span, np.random.default_rng([4, i]))
    chosen = pos[w > 0]
    runs = np.split(chosen, np.flatnonzero(np.diff(chosen) != 1) + 1)
    first = runs[int(np.random.default_rng(i).integers(len(runs)))]
    if len(runs) > 3 and first[-1] < 390 and len(first) % 2 == 0:
      hist[min(len(first) // 2, 10) - 1] += 1  # a run's length in (2-token) words
  frac = hist / hist.sum()
  # merged neighbours make long runs slightly likelier; the short end must match the geometric
  for k in range(3):
    assert abs(frac[k] - p[k]) <= sigma3(p[k], hist.sum()) + 0.03, (k, frac[k], p[k])


def test_span_masking_budget_whole_words_and_sbo_boundaries():
  spec = MaskingSpec(mask_id=MASK, vocab_size=1000, max_predictions=200, mask_rate=0.15)
  for i in range(50):
    x = words_instance(n=128, word_len=3, seed=i)
    ids, pos, labels, w, sbo = span_mask_instance(x, spec, SpanSpec(), np.random.default_rng(i))
    k = int(w.sum())
    assert k == math.ceil(126 * 0.15)
    assert np.array_equal(labels[:k], x.ids[pos[:k]])
    for slot in range(k):
      if sbo["sbo_weights"][slot]:
        left, right = sbo["sbo_left"][slot], sbo["sbo_right"][slot]
        assert left < pos[slot] < right and left not in pos[:k] and right not in pos[:k]
        assert sbo["sbo_relative"][slot] == min(pos[slot] - left - 1, 14)


FAMILY_PRESETS = ["bert-demo", "roberta-tiny", "albert-tiny", "spanbert-tiny", "modernbert-tiny",
                  "eurobert-tiny", "electra-tiny"]


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_family_preset_learns_context_on_the_shipped_engine(preset, tmp_path_factory):
  """Each preset's recipe (objective, heads, optimizer) in the one engine, on text where the
  context decides every word: after 60 steps its held-out MLM loss is well below the loss of
  a model that knows only the token frequencies (so it learned from the context)."""
  tmp_path = tmp_path_factory.mktemp(preset)
  corpus = patterned_corpus(tmp_path_factory.getbasetemp() / "pattern.txt")
  cfg = experiment_config(preset, [
      f"run_dir={tmp_path / 'run'}", f"data.source={corpus}", "data.max_seq_length=64",
      "train.steps=60", "train.batch_size=16", "train.log_every=1", "train.eval_every=1000",
      "train.eval_batches=4", "optim.warmup_steps=3", "checkpoint.every=1000",
      "train.peak_flops_per_device=1e9",
      # LAMB's trust ratio scales each update by the layer's norm: a larger rate for 60 steps
      "optim.learning_rate=5e-2" if preset == "albert-tiny" else "optim.learning_rate=3e-3"]
      + (["optim.decay_steps=5"] if preset in ("modernbert-tiny", "eurobert-tiny") else []))
  result = pretrain(cfg, quiet=True)
  assert result["eval"]["mlm_loss"] < result["unigram_baseline_loss"] - 0.2, (
      preset, result["eval"]["mlm_loss"], result["unigram_baseline_loss"])
  if preset == "spanbert-tiny":  # the body (and MLM head) exports as a plain BERT
    import transformers as T

    from bertjax import cli
    from bertjax.model_dir import load_model_dir

    assert "sbo_loss" in result["eval"]
    assert cli.main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    hf = T.BertForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ours, _ = load_model_dir(tmp_path / "run")
    ids = np.random.default_rng(0).integers(5, 1000, (2, 16))
    import torch

    with torch.no_grad():
      ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.max(np.abs(np.asarray(ours(ids).mlm_logits) - ref)) <= 1e-5


def test_modernbert_context_extension_starts_from_phase_one(tmp_path):
  """Phase 2 is a second config: phase-1 parameters, a new theta and 4x longer sequences."""
  from bertjax.model_dir import load_model_dir
  from bertjax.params import flat_params

  corpus = small_corpus(tmp_path / "books.txt", paragraphs=200)
  common = [f"data.source={corpus}", "train.batch_size=8", "train.eval_batches=1",
            "train.eval_every=1000", "train.log_every=1", "checkpoint.every=1000",
            "train.peak_flops_per_device=1e9"]
  pretrain(experiment_config("modernbert-tiny", [
      f"run_dir={tmp_path / 'p1'}", "train.steps=20", "data.max_seq_length=64",
      "optim.decay_steps=2", "optim.warmup_steps=0", "optim.learning_rate=3e-3",
      "model.rope_theta=10000", *common]), quiet=True)
  phase2 = experiment_config("modernbert-tiny-context", [
      f"run_dir={tmp_path / 'p2'}", f"train.init_from={tmp_path / 'p1'}", "train.steps=2",
      "data.max_seq_length=256", *common])
  assert phase2.model.rope_theta == 160000.0 and phase2.model.local_rope_theta == 10000.0
  seen = {}
  pretrain(phase2, quiet=True, on_step=lambda s: seen.setdefault("first", s))
  p1, _ = load_model_dir(tmp_path / "p1")
  p2, _ = load_model_dir(tmp_path / "p2")
  a, b = flat_params(p1), flat_params(p2)
  assert a.keys() == b.keys()
  # started from phase 1 (two small steps later the weights are close, not re-initialised)
  diff = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)
  assert 0 < diff < 0.05
  fresh = experiment_config("modernbert-tiny-context", [
      f"run_dir={tmp_path / 'fresh'}", "train.init_from=null", "train.steps=2",
      "data.max_seq_length=256", *common])
  pretrain(fresh, quiet=True)
  # the first step already benefits from phase 1; a fresh start sits near ln(vocab)
  assert train_losses(tmp_path / "p2")[1] < train_losses(tmp_path / "fresh")[1] - 0.3


def test_doc_sentences_blocks_never_leave_their_document():
  """SpanBERT's break_mode=doc: single-document blocks; FULL-SENTENCES crosses documents."""
  from bertjax.data.instances import Specials, full_sentence_instances

  rng = np.random.default_rng(0)
  docs = []  # document d uses token ids [100 d, 100 d + 100)
  for d in range(1, 30):
    sentences = []
    for _ in range(rng.integers(1, 6)):
      ids = rng.integers(100 * d, 100 * d + 100, rng.integers(3, 20)).astype(np.int32)
      sentences.append((ids, np.ones(len(ids), bool)))
    docs.append(sentences)
  sp = Specials(cls=2, sep=3, roberta_template=False)
  per_doc = full_sentence_instances(docs, sp, max_seq_length=64, cross_documents=False)
  crossing = full_sentence_instances(docs, sp, max_seq_length=64)
  owners = lambda x: set((x.ids[~x.special] // 100).tolist())
  assert all(len(owners(x)) == 1 for x in per_doc)
  assert all(x.ids[0] == 2 and x.ids[-1] == 3 and not (x.ids[1:-1] == 3).any() for x in per_doc)
  assert any(len(owners(x)) > 1 for x in crossing)
  assert sum(len(x.ids) - 2 for x in per_doc) == sum(len(s[0]) for d in docs for s in d)
  assert experiment_config("spanbert-tiny").data.instances == "doc_sentences"


def test_span_replacements_follow_the_unigram_in_memory_and_prepared(tmp_path):
  """Random span replacements come from the training corpus's unigram distribution, the same
  way (bit-identical batches) from text and from a prepare-data folder."""
  from bertjax.data.corpus import load_corpus
  from bertjax.data.pipeline import make_dataset, masking_spec
  from bertjax.data.prepare import prepare_data

  corpus = small_corpus(tmp_path / "corpus.txt", paragraphs=150)
  cfg = experiment_config("spanbert-tiny", [f"data.source={corpus}", "data.mask_token_prob=0",
                                            "data.random_token_prob=1"]).data
  prepared = prepare_data(cfg, tmp_path / "prep", num_shards=2)
  texts = load_corpus(cfg)
  folder = load_corpus(experiment_config("spanbert-tiny", [f"data.source={prepared}",
                                                           "data.mask_token_prob=0",
                                                           "data.random_token_prob=1"]).data)
  assert np.array_equal(texts.unigram, folder.unigram)
  spec = masking_spec(cfg, texts.tokenizer)
  kw = dict(local_batch_size=32, pad_id=0, sbo_max_targets=15)
  a = iter(make_dataset(texts.train, spec, cfg, unigram=texts.unigram, **kw))
  b = iter(make_dataset(folder.train, spec, cfg, unigram=folder.unigram, **kw))
  replaced = []
  for _ in range(25):
    x, y = next(a), next(b)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    w = x["masked_weights"] > 0
    rows, cols = np.nonzero(w)
    replaced.append(x["input_ids"][rows, x["masked_positions"][rows, cols]])
  replaced = np.concatenate(replaced)
  p = texts.unigram / texts.unigram.sum()
  n = len(replaced)
  for token in np.argsort(-p)[:5]:  # the most frequent tokens, as often as the corpus has them
    assert abs((replaced == token).mean() - p[token]) <= sigma3(p[token], n)
  uniform = 1 / len(p)
  assert (replaced == np.argmax(p)).mean() > 10 * uniform
