"""HF folders in and out: strict key checking with one-line errors that list the keys, legacy
names, prefixes, pytorch_model.bin, optimizer slots, and a run folder that bad input never
corrupts."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.numpy import load_file, save_file

from flax import nnx

from bertjax import cli
from bertjax.data.tokenizer import Tokenizer
from bertjax.interop.hf import HFImportError, load_hf
from bertjax.model_dir import load_model_dir
from bertjax.models import Model
from bertjax.params import assign_flat_params

from hf_oracle import hf_model, max_diff, run_hf


@pytest.fixture
def bert_folder(tmp_path):
  cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24)
  hf = hf_model("BertForPreTraining", cfg)
  path = tmp_path / "hf"
  hf.save_pretrained(path)
  return path, hf


def rewrite(path, fn):
  sd = load_file(path / "model.safetensors")
  save_file(fn(dict(sd)), str(path / "model.safetensors"))


def test_unknown_key_is_listed(bert_folder):
  path, _ = bert_folder
  rewrite(path, lambda sd: {**sd, "bert.encoder.layer.9.output.dense.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(HFImportError, match=r"unexpected keys: encoder.layer.9.output.dense.weight"):
    load_hf(path)


def test_missing_key_is_listed(bert_folder):
  path, _ = bert_folder
  rewrite(path, lambda sd: {k: v for k, v in sd.items() if "layer.1.intermediate" not in k})
  with pytest.raises(HFImportError, match=r"missing keys: encoder.layer.1.intermediate.dense.bias, "
                                          r"encoder.layer.1.intermediate.dense.weight"):
    load_hf(path)


def test_shape_mismatch_is_listed(bert_folder):
  path, _ = bert_folder
  rewrite(path, lambda sd: {**sd, "bert.pooler.dense.weight": np.zeros((16, 8), np.float32)})
  with pytest.raises(HFImportError, match=r"shape mismatches: pooler.dense.weight \(16, 8\)"):
    load_hf(path)


def test_legacy_names_no_prefix_optimizer_slots_and_pytorch_bin(bert_folder, tmp_path):
  path, hf = bert_folder
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  legacy = {}
  for k, v in sd.items():
    k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    legacy[k.removeprefix("bert.")] = v  # body keys without the prefix
  legacy["encoder.layer.0.output.dense.weight/adam_m"] = np.zeros(1, np.float32)
  legacy["global_step"] = np.zeros(1, np.float32)
  legacy["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
  out = tmp_path / "legacy"
  out.mkdir()
  shutil.copy(path / "config.json", out / "config.json")
  torch.save({k: torch.tensor(v) for k, v in legacy.items()}, out / "pytorch_model.bin")
  cfg, params = load_hf(out)
  assert cfg.heads == ("mlm", "nsp") and cfg.tie_word_embeddings
  ref, ref_params = load_hf(path)
  assert cfg == ref
  assert params.keys() == ref_params.keys()
  assert all(np.array_equal(params[k], ref_params[k]) for k in params)  # gamma/beta mapped
  ours = assign_flat_params(Model(cfg, rngs=nnx.Rngs(0)), params)
  ids = np.random.default_rng(0).integers(5, 50, (2, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  got, want = ours(ids, padding_mask=mask.astype(bool)), run_hf(hf, ids, mask)
  keep = mask.astype(bool)
  assert max_diff(got.last_hidden_state[keep], want.hidden_states[-1].numpy()[keep]) <= 1e-5
  assert max_diff(got.mlm_logits[keep], want.prediction_logits.numpy()[keep]) <= 1e-5
  assert max_diff(got.seq_relationship_logits, want.seq_relationship_logits.numpy()) <= 1e-5


def test_cli_errors_are_one_line_and_leave_destination_alone(bert_folder, tmp_path, capsys):
  path, _ = bert_folder
  dst = tmp_path / "ck"
  assert cli.main(["import-hf", str(path), str(dst)]) == 0
  before = sorted(p.name for p in dst.rglob("*"))
  rewrite(path, lambda sd: {k: v for k, v in sd.items() if "pooler" not in k or "bias" not in k})
  capsys.readouterr()
  assert cli.main(["import-hf", str(path), str(dst), "--overwrite"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "missing keys: pooler.dense.bias" in err
  assert sorted(p.name for p in dst.rglob("*")) == before  # the good folder is untouched
  assert cli.main(["import-hf", str(path), str(dst)]) == 2  # exists, no --overwrite
  assert "already exists" in capsys.readouterr().err
  assert cli.main(["import-hf", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
  assert "no config.json" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(Exception, match="model_type 'gpt2' is not supported"):
    load_hf(tmp_path)


def test_cli_round_trip_on_real_minilm(tmp_path):
  import weights

  src = str(weights.minilm())
  assert cli.main(["import-hf", src, str(tmp_path / "ck")]) == 0
  assert cli.main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "hf")]) == 0
  assert (tmp_path / "hf" / "tokenizer.json").exists()
  a = T.AutoModel.from_pretrained(src).eval()
  b = T.AutoModel.from_pretrained(tmp_path / "hf").eval()
  tok = T.AutoTokenizer.from_pretrained(tmp_path / "hf")
  ids = tok(["round trips are exact"], return_tensors="pt")["input_ids"].numpy()
  for (k, x), (k2, y) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
    assert k == k2 and np.array_equal(x.numpy(), y.numpy()), k  # bit-identical weights
  ra, rb = run_hf(a, ids), run_hf(b, ids)
  # (MKL may take another code path for other buffer alignment: last-ulp differences only)
  assert max_diff(ra.last_hidden_state.numpy(), rb.last_hidden_state.numpy()) <= 1e-6
  assert max_diff(ra.pooler_output.numpy(), rb.pooler_output.numpy()) <= 1e-6


def test_model_folder_loads_sharded(bert_folder, tmp_path):
  from bertjax import sharding

  path, hf = bert_folder
  assert cli.main(["import-hf", str(path), str(tmp_path / "ck")]) == 0
  mesh = sharding.make_mesh((2, 2, 2))
  model, _ = load_model_dir(tmp_path / "ck", mesh=mesh)
  kernel = model.encoder.layers[0].mlp.wi.kernel.get_value()
  assert kernel.sharding.spec == jax_spec("fsdp", "tensor")
  ids = np.array([[2, 5, 7, 9, 3]])
  out = model(ids)
  assert max_diff(out.mlm_logits, run_hf(hf, ids).prediction_logits.numpy()) <= 1e-5


def jax_spec(*axes):
  from jax.sharding import PartitionSpec

  return PartitionSpec(*axes)


def test_train_tokenizer_cli(tmp_path):
  """Each --kind loads as bertjax's Tokenizer; --cased keeps case; --min-frequency drops rare
  words (a word seen 3 times is a token at 2, pieces at 5)."""
  corpus = tmp_path / "c.txt"
  corpus.write_text("The Quick brown fox jumps over the lazy dog\n" * 50 + "zebra " * 3 + "\n")

  def train(out, *flags, size="120"):
    assert cli.main(["train-tokenizer", str(corpus), "--out", str(tmp_path / out),
                     "--vocab-size", size, *flags]) == 0
    return Tokenizer.from_dir(tmp_path / out)

  for kind, size in (("wordpiece", 120), ("bpe", 300), ("sentencepiece", 34)):
    tok = train(kind, "--kind", kind, size=str(size))
    assert tok.mask_id is not None and tok.vocab_size <= size
    assert tok.decode(tok.encode("the lazy dog").ids).replace("▁", " ").strip().lower() \
        .endswith("the lazy dog")
  lower, cased = train("lower", "--kind", "wordpiece"), train("cased", "--kind", "wordpiece", "--cased")
  assert lower.token_to_id("quick") is not None and lower.token_to_id("Quick") is None
  assert cased.token_to_id("Quick") is not None and cased.token_to_id("quick") is None
  assert train("f2", "--min-frequency", "2").token_to_id("zebra") is not None
  assert train("f5", "--min-frequency", "5").token_to_id("zebra") is None
  assert cli.main(["train-tokenizer", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t2")]) == 2


def _legacy_config(folder, drop, add):
  cfg = json.loads((folder / "config.json").read_text())
  for key in drop:
    cfg.pop(key, None)
  cfg.update(add)
  (folder / "config.json").write_text(json.dumps(cfg))


def test_hub_style_modernbert_and_remote_code_eurobert_configs(tmp_path):
  """Older hub configs: ModernBERT's global/local_rope_theta + global_attn_every_n_layers with
  no layer_types/rope_parameters; EuroBERT remote code's top-level rope_theta and auto_map."""
  mb = hf_model("ModernBertForMaskedLM", T.ModernBertConfig(
      vocab_size=60, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
      num_attention_heads=2, global_attn_every_n_layers=2, local_attention=6,
      global_rope_theta=80000.0, local_rope_theta=5000.0, pad_token_id=0, bos_token_id=1,
      eos_token_id=2, cls_token_id=1, sep_token_id=2))
  mb.save_pretrained(tmp_path / "mb")
  _legacy_config(tmp_path / "mb", ["layer_types", "rope_parameters"],
                 {"global_rope_theta": 80000.0, "local_rope_theta": 5000.0})
  cfg, _ = load_hf(tmp_path / "mb")
  assert (cfg.global_every, cfg.local_window, cfg.rope_theta, cfg.local_rope_theta) == \
      (2, 3, 80000.0, 5000.0)
  eb = hf_model("EuroBertForMaskedLM", T.EuroBertConfig(
      vocab_size=60, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
      eos_token_id=2, mask_token_id=3, rope_parameters={"rope_theta": 250000.0,
                                                        "rope_type": "default"}))
  eb.save_pretrained(tmp_path / "eb")
  _legacy_config(tmp_path / "eb", ["rope_parameters"], {
      "rope_theta": 250000.0,
      "auto_map": {"AutoModelForMaskedLM": "EuroBERT/EuroBERT-210m--modeling_eurobert.EuroBertForMaskedLM"}})
  cfg, params = load_hf(tmp_path / "eb")
  assert (cfg.rope_theta, cfg.kv_heads, cfg.heads) == (250000.0, 2, ("mlm",))
  assert "mlm.decoder.kernel" in params
