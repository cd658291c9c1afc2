"""Every family equals its transformers PyTorch class (random weights, tiny configs) to 1e-5 in
f32: all hidden states and every head's logits, padded batches and sentence pairs included; and
bertjax -> export-hf -> transformers gives the same outputs again."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import transformers as T
from flax import nnx

from bertjax.interop.hf import save_hf
from bertjax.models import Model

from hf_oracle import hf_model, import_into_bertjax, max_diff, run_hf

TOL = 1e-5


@dataclasses.dataclass
class Case:
  hf_class: str
  config: object
  types: bool = True  # the family has token types
  pad_id: int = 0
  seq_len: int = 12


def _bert(**kw):
  base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=40)
  return T.BertConfig(**{**base, **kw})


CASES = {
    "bert-pretraining": Case("BertForPreTraining", _bert()),
    # odd head count (3 x 12), vocab not a power of two, exact erf GELU vs tanh variant
    "bert-odd-sizes": Case("BertForPreTraining", _bert(hidden_size=36, num_attention_heads=3,
                                                       vocab_size=97, hidden_act="gelu_new")),
    "bert-untied-mlm": Case("BertForMaskedLM", _bert(tie_word_embeddings=False)),
    "bert-body": Case("BertModel", _bert()),
    "roberta-mlm": Case("RobertaForMaskedLM", T.RobertaConfig(
        vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=14 + 2, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2), types=False, pad_id=1, seq_len=14),
    "albert-pretraining": Case("AlbertForPreTraining", T.AlbertConfig(
        vocab_size=101, embedding_size=16, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=40)),
    "albert-groups": Case("AlbertForMaskedLM", T.AlbertConfig(
        vocab_size=101, embedding_size=16, hidden_size=30, num_hidden_layers=4,
        num_hidden_groups=2, inner_group_num=2, num_attention_heads=5, intermediate_size=37,
        max_position_embeddings=40)),
    "distilbert-mlm": Case("DistilBertForMaskedLM", T.DistilBertConfig(
        vocab_size=101, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40),
        types=False),
    "electra-discriminator": Case("ElectraForPreTraining", T.ElectraConfig(
        vocab_size=101, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=40)),
    "electra-generator": Case("ElectraForMaskedLM", T.ElectraConfig(
        vocab_size=101, embedding_size=16, hidden_size=24, num_hidden_layers=2,
        num_attention_heads=3, intermediate_size=37, max_position_embeddings=40)),
    # ModernBERT: global every 3rd layer from 0, window +-4 (local_attention=8) < sequence
    "modernbert-mlm": Case("ModernBertForMaskedLM", T.ModernBertConfig(
        vocab_size=101, hidden_size=32, intermediate_size=24, num_hidden_layers=4,
        num_attention_heads=4, global_attn_every_n_layers=3, local_attention=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
        types=False),
    # a long sequence: local layers take the block-local path (no [len, len] scores)
    "modernbert-long": Case("ModernBertForMaskedLM", T.ModernBertConfig(
        vocab_size=101, hidden_size=32, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=2, global_attn_every_n_layers=2, local_attention=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
        types=False, seq_len=45),
    # EuroBERT: grouped-query attention (4 query heads, 2 kv heads), RoPE theta 250k
    "eurobert-mlm": Case("EuroBertForMaskedLM", T.EuroBertConfig(
        vocab_size=101, hidden_size=32, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, mask_token_id=3, rope_parameters={"rope_theta": 250000.0,
                                                          "rope_type": "default"}),
        types=False),
}


def make_inputs(case: Case, batch: int = 3, seed: int = 0):
  """Row 0 full length; rows 1.. padded; token types as a sentence pair split."""
  rng = np.random.default_rng(seed)
  vocab = case.config.vocab_size
  ids = rng.integers(3, vocab, (batch, case.seq_len))
  lengths = [case.seq_len] + [max(3, case.seq_len - 3 * i) for i in range(1, batch)]
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
    ids[i, n:] = case.pad_id
  types = None
  if case.types:
    types = np.zeros_like(ids)
    for i, n in enumerate(lengths):
      types[i, n // 2:n] = 1
  return ids, mask, types


def ours_forward(model, ids, mask, types):
  return model(jnp.asarray(ids), padding_mask=jnp.asarray(mask, bool),
               token_type_ids=None if types is None else jnp.asarray(types),
               output_hidden_states=True)


def compare(case: Case, hf_out, ours) -> dict[str, float]:
  diffs = {}
  assert len(ours.hidden_states) == len(hf_out.hidden_states)
  for i, (a, b) in enumerate(zip(ours.hidden_states, hf_out.hidden_states)):
    diffs[f"hidden_{i}"] = max_diff(a, b.numpy())
  if ours.mlm_logits is not None:
    hf_logits = getattr(hf_out, "prediction_logits", None)
    diffs["mlm"] = max_diff(ours.mlm_logits, (hf_logits if hf_logits is not None else hf_out.logits).numpy())
  if ours.seq_relationship_logits is not None:
    hf_seq = getattr(hf_out, "seq_relationship_logits", None)
    hf_seq = hf_seq if hf_seq is not None else hf_out.sop_logits
    diffs["seq_relationship"] = max_diff(ours.seq_relationship_logits, hf_seq.numpy())
  if ours.rtd_logits is not None:
    diffs["rtd"] = max_diff(ours.rtd_logits, hf_out.logits.numpy())
  return diffs


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_model_matches_transformers(name, tmp_path):
  case = CASES[name]
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path)
  ids, mask, types = make_inputs(case)
  diffs = compare(case, run_hf(hf, ids, mask, types), ours_forward(ours, ids, mask, types))
  expected_heads = {"BertForPreTraining": {"mlm", "seq_relationship"},
                    "AlbertForPreTraining": {"mlm", "seq_relationship"},
                    "ElectraForPreTraining": {"rtd"}, "BertModel": set()}.get(case.hf_class, {"mlm"})
  assert expected_heads <= set(diffs), diffs
  assert max(diffs.values()) <= TOL, diffs


def test_roberta_sequence_of_exactly_max_positions(tmp_path):
  """514-style table: 512 usable positions start at padding_idx + 1 (the classic off-by-two)."""
  case = CASES["roberta-mlm"]
  usable = case.config.max_position_embeddings - case.config.pad_token_id - 1
  assert case.seq_len == usable
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path)
  ids, _, _ = make_inputs(case, batch=1)
  full = np.ones_like(ids)
  diffs = compare(case, run_hf(hf, ids, full), ours_forward(ours, ids, full, None))
  assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_loads_in_transformers_with_equal_outputs(name, tmp_path):
  """A fresh bertjax model (its own random init) -> export-hf -> transformers: same outputs."""
  case = CASES[name]
  hf_ref = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf_ref, tmp_path / "ref")  # only for the config
  fresh = Model(ours.config, rngs=nnx.Rngs(7))
  save_hf(fresh, tmp_path / "export")
  loaded = getattr(T, case.hf_class).from_pretrained(tmp_path / "export",
                                                     attn_implementation="eager").eval()
  ids, mask, types = make_inputs(case, seed=1)
  diffs = compare(case, run_hf(loaded, ids, mask, types), ours_forward(fresh, ids, mask, types))
  assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("name", ["bert-pretraining", "albert-groups", "electra-discriminator",
                                  "modernbert-mlm", "eurobert-mlm"])
def test_import_export_round_trip_is_exact(name, tmp_path):
  case = CASES[name]
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path / "in")
  save_hf(ours, tmp_path / "out")
  again = getattr(T, case.hf_class).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
  for (k, a), (k2, b) in zip(sorted(hf.state_dict().items()), sorted(again.state_dict().items())):
    assert k == k2
    assert np.array_equal(a.numpy(), b.numpy()), k


def test_attention_implementations_agree(tmp_path):
  """The fused XLA path and the einsum reference give the same outputs (no dropout)."""
  case = CASES["bert-odd-sizes"]
  hf = hf_model(case.hf_class, case.config)
  ours = import_into_bertjax(hf, tmp_path)
  ids, mask, types = make_inputs(case)
  outs = {}
  for impl in ("einsum", "xla"):
    for layer in ours.encoder.layers:
      layer.attention.impl = impl
    outs[impl] = ours_forward(ours, ids, mask, types)
  assert max_diff(outs["einsum"].mlm_logits, outs["xla"].mlm_logits) <= TOL


def test_masked_positions_gather_equals_full_logits(tmp_path):
  case = CASES["bert-pretraining"]
  ours = import_into_bertjax(hf_model(case.hf_class, case.config), tmp_path)
  ids, mask, types = make_inputs(case)
  positions = np.array([[1, 4, 7], [0, 2, 5], [3, 3, 8]])
  full = ours_forward(ours, ids, mask, types).mlm_logits
  gathered = ours(jnp.asarray(ids), padding_mask=jnp.asarray(mask, bool),
                  token_type_ids=jnp.asarray(types), masked_positions=jnp.asarray(positions)).mlm_logits
  expected = np.take_along_axis(np.asarray(full), positions[..., None], axis=1)
  assert gathered.shape == (3, 3, case.config.vocab_size)
  assert max_diff(gathered, expected) <= 1e-6


def test_electra_joint_model_shares_embeddings_and_matches_transformers(tmp_path):
  """Generator + discriminator sharing embeddings: each half equals its HF class when the HF
  generator is given the discriminator's embedding tables."""
  from bertjax.config import model_config
  from bertjax.params import assign_flat_params, flat_params

  disc_case = CASES["electra-discriminator"]
  hf_disc = hf_model("ElectraForPreTraining", disc_case.config)
  gen_cfg = T.ElectraConfig(vocab_size=101, embedding_size=16, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=1, intermediate_size=64, max_position_embeddings=40)
  hf_gen = hf_model("ElectraForMaskedLM", gen_cfg, seed=1)
  with __import__("torch").no_grad():
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
      src = getattr(hf_disc.electra.embeddings, name)
      dst = getattr(hf_gen.electra.embeddings, name)
      for p_src, p_dst in zip(src.parameters(), dst.parameters()):
        p_dst.copy_(p_src)
  disc = import_into_bertjax(hf_disc, tmp_path / "d")
  gen = import_into_bertjax(hf_gen, tmp_path / "g")
  cfg = model_config({**dataclasses.asdict(disc.config), "generator_width_fraction": 0.5})
  assert cfg.generator().hidden_size == 16 and cfg.generator().num_heads == 1
  joint = Model(cfg, rngs=nnx.Rngs(0))
  assert joint.generator.embeddings is joint.encoder.embeddings
  values = dict(flat_params(disc))
  values.update({f"generator.{k[len('encoder.'):]}": v for k, v in flat_params(gen).items()
                 if k.startswith("encoder.") and not k.startswith("encoder.embeddings.")})
  values.update({f"generator_{k}": v for k, v in flat_params(gen).items() if k.startswith("mlm.")})
  assign_flat_params(joint, values)
  ids, mask, types = make_inputs(disc_case)
  hf_d, hf_g = run_hf(hf_disc, ids, mask, types), run_hf(hf_gen, ids, mask, types)
  out = ours_forward(joint, ids, mask, types)
  gen_logits = joint.generator_logits(jnp.asarray(ids), padding_mask=jnp.asarray(mask, bool),
                                      token_type_ids=jnp.asarray(types))
  assert max_diff(out.rtd_logits, hf_d.logits.numpy()) <= TOL
  assert max_diff(gen_logits, hf_g.logits.numpy()) <= TOL
