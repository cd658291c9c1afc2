"""Fine-tuning heads equal transformers' task classes (random weights, tiny configs, f32, padded
batches) to 1e-5 for every family, and an exported bertjax task model loads in transformers
with equal logits."""

import copy
import dataclasses

import numpy as np
import pytest
import transformers as T
from flax import nnx

from bertjax.interop.hf import save_hf
from bertjax.models import Model

from hf_oracle import hf_model, import_into_bertjax, max_diff, run_hf
from test_parity import CASES, make_inputs, ours_forward

TOL = 1e-5
SUFFIX = {"seq": "ForSequenceClassification", "token": "ForTokenClassification",
          "qa": "ForQuestionAnswering"}
FAMILIES = {"bert": ("Bert", "bert-pretraining"), "roberta": ("Roberta", "roberta-mlm"),
            "albert": ("Albert", "albert-pretraining"),
            "distilbert": ("DistilBert", "distilbert-mlm"),
            "electra": ("Electra", "electra-discriminator"),
            "modernbert": ("ModernBert", "modernbert-mlm"), "eurobert": ("EuroBert", "eurobert-mlm")}
TASK_CASES = [(f, k) for f in FAMILIES for k in SUFFIX if not (f == "eurobert" and k == "qa")]
POOLING_CASES = [("modernbert", {"classifier_pooling": "mean"}),
                 ("eurobert", {"classifier_pooling": "bos"}),
                 ("eurobert", {"classifier_pooling": "mean"}),
                 ("bert", {"problem_type": "multi_label_classification"}),
                 ("roberta", {"num_labels": 1})]


def _case(family: str, kind: str, **extra):
  prefix, base = FAMILIES[family]
  case = copy.deepcopy(CASES[base])
  case.config.num_labels = 2 if kind == "qa" else extra.pop("num_labels", 3)
  for k, v in extra.items():
    setattr(case.config, k, v)
  case.hf_class = prefix + SUFFIX[kind]
  return case


def _logits(out):
  if hasattr(out, "start_logits"):
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
  return out.logits.numpy()


def _diffs(hf_out, ours):
  diffs = {f"hidden_{i}": max_diff(a, b.numpy())
           for i, (a, b) in enumerate(zip(ours.hidden_states, hf_out.hidden_states))}
  diffs["task"] = max_diff(ours.task_logits, _logits(hf_out))
  return diffs


@pytest.mark.parametrize("family,kind", TASK_CASES)
def test_task_head_matches_transformers(family, kind, tmp_path):
  case = _case(family, kind)
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path)
  assert ours.config.task_head == {"seq": "classifier", "token": "token_classifier",
                                   "qa": "qa"}[kind]
  ids, mask, types = make_inputs(case)
  diffs = _diffs(run_hf(hf, ids, mask, types), ours_forward(ours, ids, mask, types))
  assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("family,extra", POOLING_CASES, ids=lambda x: str(x))
def test_classifier_variants_match_transformers(family, extra, tmp_path):
  case = _case(family, "seq", **extra)
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path)
  ids, mask, types = make_inputs(case)
  diffs = _diffs(run_hf(hf, ids, mask, types), ours_forward(ours, ids, mask, types))
  assert max(diffs.values()) <= TOL, diffs
  if "problem_type" in extra:
    assert ours.config.problem_type == "multi_label"
  if extra.get("num_labels") == 1:
    assert ours.config.problem_type == "regression"


@pytest.mark.parametrize("family,kind", TASK_CASES)
def test_exported_task_model_loads_in_transformers(family, kind, tmp_path):
  """A fresh bertjax task model with named labels -> export-hf -> AutoModelFor*: equal logits,
  and the label names survive as id2label."""
  case = _case(family, kind)
  ref = import_into_bertjax(hf_model(case.hf_class, case.config), tmp_path / "ref")
  labels = ("start", "end") if kind == "qa" else ("O", "B-x", "I-x")
  cfg = dataclasses.replace(ref.config, labels=labels)
  fresh = Model(cfg, rngs=nnx.Rngs(7))
  save_hf(fresh, tmp_path / "export")
  auto = {"seq": T.AutoModelForSequenceClassification, "token": T.AutoModelForTokenClassification,
          "qa": T.AutoModelForQuestionAnswering}[kind]
  loaded = auto.from_pretrained(tmp_path / "export", attn_implementation="eager").eval()
  assert type(loaded).__name__ == case.hf_class
  assert [loaded.config.id2label[i] for i in range(len(labels))] == list(labels)
  ids, mask, types = make_inputs(case, seed=1)
  diffs = _diffs(run_hf(loaded, ids, mask, types), ours_forward(fresh, ids, mask, types))
  assert max(diffs.values()) <= TOL, diffs
