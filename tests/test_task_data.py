"""Fine-tuning data and metrics: file formats and label checks, first-subword NER features,
run_squad-style QA windows and post-processing on SQuAD-format fixtures, and the metrics
against hand-checked values (seqeval chunking, the official SQuAD EM/F1)."""

import json

import numpy as np
import pytest

from bertjax.data.corpus import SHIPPED_TOKENIZERS
from bertjax.data.sources import CORPUS_DIR
from bertjax.data.tokenizer import Tokenizer
from bertjax.tasks import metrics as M
from bertjax.config import TaskDataConfig
from bertjax.tasks.features import IGNORE, token_features, word_predictions
from bertjax.errors import UserError
from bertjax.tasks.formats import TaskDataError, check_labels, infer_labels, read_split
from bertjax.tasks.qa import _windows, postprocess, qa_features
from bertjax.tasks.types import task_type


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.from_dir(CORPUS_DIR / SHIPPED_TOKENIZERS["corpus"])


def _cfg(path, **kw):
  return TaskDataConfig(train=str(path), **kw)


# -- formats ---------------------------------------------------------------------------------


def test_jsonl_csv_tsv_and_glue_rows(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "fine film", "label": "fresh"}\n\n'
                                    '{"text": "dull", "label": "rotten"}\n')
  (tmp_path / "a.csv").write_text('sentence,other,label\n"a, quoted ""one""",x,1\nplain,y,0\n')
  (tmp_path / "a.tsv").write_text("s1\ts2\tscore\nA man.\tA person.\t4.2\n")
  # GLUE files hold bare quotes: read without quote handling; headerless CoLA-style columns
  (tmp_path / "cola.tsv").write_text('gj04\t1\t\t"Bill," she said.\ngj04\t0\t*\tThe the.\n')
  rows = read_split("train", task_type("classification"), _cfg(tmp_path / "a.jsonl"))
  assert [(r["text"], r["label"]) for r in rows] == [("fine film", "fresh"), ("dull", "rotten")]
  rows = read_split("train", task_type("classification"),
                    _cfg(tmp_path / "a.csv", text_field="sentence"))
  assert [(r["text"], r["label"]) for r in rows] == [('a, quoted "one"', "1"), ("plain", "0")]
  rows = read_split("train", task_type("regression"), _cfg(tmp_path / "a.tsv", text_field="s1",
                                                  text_pair_field="s2", label_field="score"))
  assert rows[0]["text_pair"] == "A person." and rows[0]["label"] == pytest.approx(4.2)
  rows = read_split("train", task_type("classification"),
                    _cfg(tmp_path / "cola.tsv", format="glue", header=False,
                         text_field="3", label_field="1"))
  assert [(r["text"], r["label"]) for r in rows] == [('"Bill," she said.', "1"), ("The the.", "0")]


def test_multi_label_rows_and_label_inference(tmp_path):
  (tmp_path / "m.jsonl").write_text('{"text": "x", "label": ["b", "a"]}\n{"text": "y", "label": []}\n')
  (tmp_path / "m.csv").write_text("text,label\nz,\"c, a\"\n")
  rows = read_split("train", task_type("multi_label"), _cfg(tmp_path / "m.jsonl"))
  assert rows[0]["label"] == ["b", "a"] and rows[1]["label"] == []
  assert read_split("train", task_type("multi_label"),
                    _cfg(tmp_path / "m.csv"))[0]["label"] == ["c", "a"]
  assert infer_labels(rows, task_type("multi_label")) == ("a", "b")
  numeric = [{"label": x} for x in ("10", "2", "1")]
  assert infer_labels(numeric, task_type("classification")) == ("1", "2", "10")  # numeric order
  assert infer_labels(numeric, task_type("classification"), ("10", "2", "1")) == ("10", "2", "1")


def test_bad_rows_name_file_line_and_field(tmp_path):
  p = tmp_path / "dev.jsonl"
  p.write_text('{"text": "ok", "label": "fresh"}\n{"text": "??", "label": "meh"}\n')
  rows = read_split("train", task_type("classification"), _cfg(p))
  with pytest.raises(TaskDataError, match=r"dev.jsonl:2: validation label 'meh' is not in"):
    check_labels(rows, task_type("classification"), ("fresh", "rotten"), "validation")
  with pytest.raises(TaskDataError, match=r"dev.jsonl:1: no field 'sentence'"):
    read_split("train", task_type("classification"), _cfg(p, text_field="sentence"))
  (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
  with pytest.raises(TaskDataError, match=r"bad.jsonl:2: invalid JSON"):
    read_split("train", task_type("classification"), _cfg(tmp_path / "bad.jsonl"))
  (tmp_path / "r.csv").write_text("text,label\nx,high\n")
  with pytest.raises(TaskDataError, match=r"r.csv:2: label='high' is not a number"):
    read_split("train", task_type("regression"), _cfg(tmp_path / "r.csv"))
  with pytest.raises(TaskDataError, match="cannot tell the format"):
    read_split("train", task_type("classification"), _cfg(tmp_path / "data.parquet"))


def test_conll_sentences(tmp_path):
  p = tmp_path / "ner.conll"
  p.write_text("-DOCSTART-\tO\n\n@user\tO\nJohn\tB-person\nSmith\tI-person\n\n\n"
               "Paris  B-geo-loc\nrocks O\n")
  rows = read_split("train", task_type("token_classification"), _cfg(p))
  assert [r["tokens"] for r in rows] == [["@user", "John", "Smith"], ["Paris", "rocks"]]
  assert rows[0]["tags"] == ["O", "B-person", "I-person"]
  assert infer_labels(rows, task_type("token_classification")) == (
      "B-geo-loc", "B-person", "I-person", "O")
  with pytest.raises(TaskDataError, match="check_labels|is not in"):
    check_labels(rows, task_type("token_classification"), ("O",), "test")


def _squad(tmp_path, qas, context):
  p = tmp_path / "squad.json"
  p.write_text(json.dumps({"version": "v2.0", "data": [
      {"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
  return p


def test_squad_json_and_answer_offsets(tmp_path):
  context = "Denver Broncos won Super Bowl 50 in Santa Clara."
  p = _squad(tmp_path, [
      {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]},
      {"id": "q2", "question": "Who lost?", "answers": [], "is_impossible": True}], context)
  rows = read_split("train", task_type("qa"), _cfg(p))
  assert [r["id"] for r in rows] == ["q1", "q2"]
  assert [r["is_impossible"] for r in rows] == [False, True]
  bad = _squad(tmp_path, [{"id": "q", "question": "?", "answers": [
      {"text": "Broncos", "answer_start": 0}]}], context)
  with pytest.raises(TaskDataError, match="question q: answer 'Broncos' is not at context"):
    read_split("train", task_type("qa"), _cfg(bad))


# -- token classification features ------------------------------------------------------------


def test_first_subword_labels_and_word_predictions(tokenizer):
  words = ["John", "unbelievably", "went", "to", "Paris"]
  tags = ["B-person", "O", "O", "O", "B-loc"]
  labels = ("B-loc", "B-person", "O")
  arrays, starts = token_features([{"tokens": words, "tags": tags}], tokenizer, labels, 16)
  pieces = [tokenizer.tokenize(w)[0] for w in words]
  assert len(pieces[1]) > 1  # "unbelievably" splits into subwords
  label_row = arrays["label"][0]
  assert label_row[0] == IGNORE  # [CLS]
  expected, pos = [], 1
  for w, p in enumerate(pieces):
    assert starts[0][w] == pos
    expected += [labels.index(tags[w])] + [IGNORE] * (len(p) - 1)
    pos += len(p)
  assert list(label_row[1:pos]) == expected and (label_row[pos:] == IGNORE).all()
  assert arrays["input_ids"][0][pos] == tokenizer.sep_id
  # logits that are right at first subwords and wrong elsewhere read back as the gold tags
  logits = np.zeros((1, 16, 3))
  logits[0, :, 0] = 5.0
  for w, s in enumerate(starts[0]):
    logits[0, s, labels.index(tags[w])] = 10.0
  assert word_predictions(logits, starts, labels) == [tags]
  # a sentence longer than the window: cut-off words are predicted "O"
  _, starts = token_features([{"tokens": words * 4, "tags": tags * 4}], tokenizer, labels, 12)
  assert (starts[0][-5:] == -1).all()
  assert word_predictions(np.zeros((1, 12, 3)), starts, labels)[0][-1] == "O"


# -- QA features and post-processing ----------------------------------------------------------


LONG = ("The river Thames flows through London. Its source is in the Cotswolds near a small "
        "village. Many bridges cross the river, the most famous being Tower Bridge, which opened "
        "in 1894. The tidal section is managed by the Port of London Authority and it reaches "
        "the North Sea at an estuary in Essex and Kent.")


def _example(answer: str | None, qid="q"):
  answers = [] if answer is None else [{"text": answer, "answer_start": LONG.index(answer)}]
  return {"id": qid, "question": "When did Tower Bridge open?", "context": LONG,
          "answers": answers, "is_impossible": answer is None}


def test_windows_cover_the_context_like_run_squad():
  assert _windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
  assert _windows(3, 8, 2) == [(0, 3)]
  assert _windows(0, 8, 2) == [(0, 0)]
  spans = _windows(61, 24, 8)
  covered = set()
  for s, n in spans:
    covered |= set(range(s, s + n))
  assert covered == set(range(61)) and spans[-1][0] + spans[-1][1] == 61


def test_qa_features_windows_offsets_labels_and_max_context(tokenizer):
  feats = qa_features([_example("1894"), _example(None, "q2")], tokenizer, max_length=32,
                      doc_stride=8, max_query_length=64)
  mine = feats.example_index == 0
  assert mine.sum() >= 4  # the context spans several windows
  ctx_tokens = tokenizer.tokenize(LONG)
  for f in np.flatnonzero(mine):
    chars = feats.token_to_char[f]
    ids = feats.arrays["input_ids"][f]
    for j in np.flatnonzero(chars[:, 0] >= 0):  # every context token maps back to its text
      a, b = chars[j]
      assert (a, b) in [tuple(o) for o in ctx_tokens[1]]
      assert tokenizer.decode([ids[j]]).replace("##", "") == LONG[a:b].lower()
  # the answer is labelled exactly in the windows that contain it, [CLS] elsewhere
  labelled = [f for f in np.flatnonzero(mine) if feats.arrays["start_position"][f] > 0]
  assert labelled
  for f in labelled:
    s, e = feats.arrays["start_position"][f], feats.arrays["end_position"][f]
    assert LONG[feats.token_to_char[f][s][0]:feats.token_to_char[f][e][1]] == "1894"
  # each context token is "max context" in exactly one window
  counts = {}
  for f in np.flatnonzero(mine):
    for j in np.flatnonzero(feats.max_context[f]):
      counts[tuple(feats.token_to_char[f][j])] = counts.get(tuple(feats.token_to_char[f][j]), 0) + 1
  assert set(counts.values()) == {1} and len(counts) == len(ctx_tokens[0])
  # unanswerable: every window points at [CLS]
  theirs = feats.example_index == 1
  assert (feats.arrays["start_position"][theirs] == 0).all()
  assert (feats.arrays["end_position"][theirs] == 0).all()


def test_answer_at_a_window_edge(tokenizer):
  """An answer whose last token is a window's last context token is labelled there; a window
  that holds only part of an answer labels [CLS]."""
  ctx_ids, offsets, _ = tokenizer.tokenize(LONG)
  q_len = len(tokenizer.tokenize("When did Tower Bridge open?")[0])
  max_length, stride = 24, 5
  max_tokens = max_length - q_len - 3
  spans = _windows(len(ctx_ids), max_tokens, stride)
  # pick a 2-token answer ending at the last token of window 1 and starting inside window 0's end
  end_tok = spans[1][0] + spans[1][1] - 1
  a, b = offsets[end_tok - 1][0], offsets[end_tok][1]
  answer = LONG[a:b]
  ex = {"id": "edge", "question": "When did Tower Bridge open?", "context": LONG,
        "answers": [{"text": answer, "answer_start": a}], "is_impossible": False}
  feats = qa_features([ex], tokenizer, max_length=max_length, doc_stride=stride,
                      max_query_length=64)
  starts, ends = feats.arrays["start_position"], feats.arrays["end_position"]
  for w, (s, n) in enumerate(spans):
    inside = s <= end_tok - 1 and end_tok < s + n
    assert (starts[w] > 0) == inside, (w, s, n)
  f = 1
  assert LONG[feats.token_to_char[f][starts[f]][0]:feats.token_to_char[f][ends[f]][1]] == answer
  assert feats.arrays["input_ids"][f][ends[f] + 1] == tokenizer.sep_id  # the window's last token


def _logits_for(feats, spans: dict[int, tuple[int, int, float]], length: int):
  n = len(feats.example_index)
  start = np.full((n, length), -5.0)
  end = np.full((n, length), -5.0)
  for f, (s, e, v) in spans.items():
    start[f, s] = v
    end[f, e] = v
  return start, end


def test_postprocess_picks_the_best_valid_span(tokenizer):
  ex = _example("1894")
  feats = qa_features([ex], tokenizer, max_length=32, doc_stride=8, max_query_length=64)
  f = next(f for f in range(len(feats.example_index)) if feats.arrays["start_position"][f] > 0
           and feats.max_context[f][feats.arrays["start_position"][f]])
  s, e = feats.arrays["start_position"][f], feats.arrays["end_position"][f]
  start, end = _logits_for(feats, {f: (s, e, 4.0)}, 32)
  # a higher-scoring span that ends before it starts, and one in the question, are skipped
  start[f, e + 1], end[f, s - 1] = 9.0, 9.0
  start[f, 2], end[f, 3] = 9.5, 9.5
  pred = postprocess([ex], feats, start, end, n_best_size=20, max_answer_length=30)
  assert pred.answers["q"] == "1894"
  # max_answer_length: the same start with a far end is rejected at max_answer_length=1
  end[f, e] = -5.0
  end[f, e + 3] = 4.0
  pred = postprocess([ex], feats, start, end, max_answer_length=1)
  assert len(pred.answers["q"].split()) <= 1
  assert abs(sum(x["probability"] for x in pred.nbest["q"]) - 1.0) < 1e-6


def test_squad_v2_null_threshold(tokenizer):
  exs = [_example("1894", "has"), _example(None, "none")]
  feats = qa_features(exs, tokenizer, max_length=32, doc_stride=8, max_query_length=64)
  spans = {}
  for f, e in enumerate(feats.example_index):
    s = feats.arrays["start_position"][f]
    if e == 0 and s > 0 and feats.max_context[f][s]:
      spans[f] = (s, feats.arrays["end_position"][f], 3.0)
    elif e == 1 and f not in spans:
      spans[f] = (20, 21, 1.0)
  start, end = _logits_for(feats, spans, 32)
  start[:, 0] = end[:, 0] = 1.0  # null score 2.0 everywhere: beats "none"'s span (2.0 vs ...)
  start[feats.example_index == 1, 0] = end[feats.example_index == 1, 0] = 2.0
  pred = postprocess(exs, feats, start, end, version_2_with_negative=True)
  assert pred.answers["has"] == "1894"  # 6.0 span vs null 2.0
  assert pred.answers["none"] == ""  # null 4.0 vs span 2.0
  assert pred.null_diffs["has"] == pytest.approx(2.0 - 6.0)
  assert M.squad_metrics(pred.answers, exs)["exact"] == 100.0
  f1, thresh = M.best_null_threshold(exs, pred.best_spans, pred.null_diffs)
  assert f1 == 100.0 and pred.null_diffs["has"] <= thresh < pred.null_diffs["none"]
  strict = postprocess(exs, feats, start, end, version_2_with_negative=True,
                       null_score_diff_threshold=-10.0)
  assert strict.answers == {"has": "", "none": ""}


# -- metrics -----------------------------------------------------------------------------------


def test_squad_em_f1_official_normalisation():
  assert M.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
  assert M.exact_match("Denver Broncos", "denver broncos.") == 1.0
  assert M.span_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
  assert M.span_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
  assert M.span_f1("", "") == 1.0 and M.span_f1("x", "") == 0.0
  exs = [{"id": "a", "answers": [{"text": "Tower Bridge"}, {"text": "the bridge"}]},
         {"id": "b", "answers": [], "is_impossible": True}]
  m = M.squad_metrics({"a": "bridge", "b": ""}, exs)  # "the bridge" normalises to "bridge"
  assert m["exact"] == 100.0 and m["has_ans_f1"] == 100.0 and m["no_ans_exact"] == 100.0
  m = M.squad_metrics({"a": "Tower", "b": "a bridge"}, exs)  # max over golds; NoAns wants ""
  assert m["exact"] == 0.0
  assert m["f1"] == pytest.approx(100.0 * (2 * 1.0 * 0.5 / 1.5 + 0.0) / 2)


def test_seqeval_chunks_and_entity_f1():
  assert M.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
  assert M.get_entities(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]  # I- after O starts one
  assert M.get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]
  assert M.get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
  assert M.get_entities(["B-geo-loc", "I-geo-loc"]) == [("geo-loc", 0, 1)]
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
  pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
  m = M.entity_metrics(pred, gold)  # 2 right of 3 predicted, of 3 gold
  assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
  assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)


def test_classification_and_regression_metrics():
  gold = np.array([1, 0, 0, 0])
  logits = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], float)
  m = M.classification_metrics(logits, gold, ("neg", "pos"))
  assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
  assert m["mcc"] == pytest.approx(2 / np.sqrt(12))
  assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
  assert M.matthews_corrcoef(np.array([0, 1, 2, 0]), np.array([0, 1, 2, 0])) == pytest.approx(1.0)
  assert M.matthews_corrcoef(np.zeros(4, int), np.array([0, 1, 0, 1])) == 0.0
  r = M.regression_metrics(np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.5, 2.9, 6.0]))
  assert r["spearman"] == pytest.approx(1.0) and 0.95 < r["pearson"] < 1.0
  ml = M.multi_label_metrics(np.array([[1.0, -1.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
  assert ml["accuracy"] == 0.5 and ml["f1_micro"] == pytest.approx(0.8)


def test_multi_label_exact_match_is_over_rows():
  """Exact match: the fraction of rows whose whole label set is right (hand-computed), in the
  training metric and in the dev metric alike; the loss stays the mean BCE over label slots."""
  import jax.numpy as jnp
  import optax

  from bertjax.objectives.finetune import TaskObjective

  logits = np.array([[2.0, -1.0], [3.0, 1.0], [-1.0, -2.0]], np.float32)
  label = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # rows right: 1 of 3
  objective = TaskObjective(task_type("multi_label"))

  class Head:
    def __call__(self, *a, **k):
      return type("Out", (), {"task_logits": jnp.asarray(logits)})()

  batch = {"input_ids": np.zeros((3, 4), np.int32), "padding_mask": np.ones((3, 4), bool),
           "label": label}
  loss, sums = objective(Head(), batch, None, objective.totals(batch))
  m = objective.finalize({k: np.asarray(v) for k, v in sums.items()})
  assert m["exact_match"] == pytest.approx(1 / 3)
  bce = float(optax.sigmoid_binary_cross_entropy(logits, label).mean())
  assert float(loss) == pytest.approx(bce) and m["loss"] == pytest.approx(bce)
  assert M.multi_label_metrics(logits, label)["accuracy"] == pytest.approx(1 / 3)


def test_unlabelled_multi_label_files_have_no_metrics(tmp_path, tokenizer):
  from bertjax.config import finetune_config
  from bertjax.tasks.data import load_split

  (tmp_path / "x.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
  cfg = finetune_config("rt-polarity", ["init_from=x", "task=multi_label", "data.labels=[p, q]",
                                        "train.metric=f1_micro", f"data.test={tmp_path / 'x.jsonl'}"])
  multi_label = task_type("multi_label")
  split = load_split("test", cfg, multi_label, tokenizer, ("p", "q"))
  metrics, preds = multi_label.evaluate(split, np.zeros((2, 2), np.float32), cfg, ("p", "q"))
  assert metrics == {} and len(preds) == 2


def test_packaged_task_data_works_anywhere(tmp_path):
  """rt-polarity and wnut16-ner ship inside the package: their presets need no checkout."""
  from bertjax.config import finetune_config
  from bertjax.tasks.formats import data_file, read_split, split_source

  rt = finetune_config("rt-polarity", [])
  assert rt.data.dataset == "rt-polarity" and not rt.data.train
  assert "bertjax/data/tasks/rt-polarity/train.jsonl" in split_source("train", rt.data)
  assert len(read_split("train", task_type(rt.task), rt.data)) == 10201
  assert len(read_split("test", task_type(rt.task), rt.data)) == 1276
  ner = finetune_config("wnut16-ner", [])
  sentences = read_split("validation", task_type(ner.task), ner.data)
  assert len(sentences) == 239 and {"tokens", "tags"} <= set(sentences[0])
  # a path overrides one split; the others stay packaged
  own = tmp_path / "own.jsonl"
  own.write_text('{"text": "fine", "label": "fresh"}\n')
  mixed = finetune_config("rt-polarity", [f"data.train={own}"])
  assert len(read_split("train", task_type(mixed.task), mixed.data)) == 1
  assert len(read_split("validation", task_type(mixed.task), mixed.data)) == 1275
  assert data_file("rt-polarity:test").endswith("rt-polarity/test.jsonl")
  with pytest.raises(UserError, match="data.dataset=imdb is not shipped"):
    read_split("train", task_type("classification"),
               finetune_config("rt-polarity", ["data.dataset=imdb"]).data)
