"""Each family's architecture choices: the ``ModelConfig`` values that make a model BERT,
RoBERTa, ... -- read like the papers' architecture tables. Sizes live in the model presets
(``configs/model/``); Hugging Face names live in ``bertjax/interop/``.

Resolution order for a model: dataclass defaults < family values < preset YAML < overrides.
"""

from __future__ import annotations

from typing import Any

from bertjax.errors import ConfigError

# BERT (Devlin et al. 2018): post-LN, exact GELU in HF (tanh in the TF original), LN eps 1e-12,
# learned absolute positions, 2 token types, tanh pooler, MLM (tied) + NSP heads.
BERT = dict(vocab_size=30522, hidden_act="gelu", norm_eps=1e-12, type_vocab_size=2,
            pad_token_id=0, max_position_embeddings=512, pooler=True, heads=("mlm", "nsp"))

# RoBERTa (Liu et al. 2019): BERT's block with LN eps 1e-5, positions offset by padding_idx+1
# (fairseq make_positions; 514-row table), one zeroed token type, no NSP, no pretrained pooler.
# Its classifier reads the first token through dense -> tanh -> out_proj.
ROBERTA = dict(vocab_size=50265, hidden_act="gelu", head_act="gelu", norm_eps=1e-5,
               type_vocab_size=1, pad_token_id=1, position_offset=2, max_position_embeddings=514,
               pooler=False, heads=("mlm",), classifier_pooling="cls",
               classifier_transform="sequence", classifier_act="tanh")

# ALBERT (Lan et al. 2019): factorized embeddings (E=128 -> H), all layers sharing one block
# group, tanh-GELU, no dropout in v2 (only classifier_dropout_prob), MLM head projecting to E,
# sentence-order prediction.
ALBERT = dict(vocab_size=30000, embedding_size=128, hidden_act="gelu_tanh", norm_eps=1e-12,
              hidden_dropout=0.0, attention_dropout=0.0, num_hidden_groups=1, inner_group_num=1,
              type_vocab_size=2, pad_token_id=0, pooler=True, heads=("mlm", "sop"),
              classifier_dropout=0.1)

# DistilBERT (Sanh et al. 2019): six BERT layers, no token types, no pooler, LN eps 1e-12, no
# dropout on the attention output; its classifier is pre_classifier -> ReLU with
# seq_classif_dropout 0.2.
DISTILBERT = dict(vocab_size=30522, num_layers=6, hidden_act="gelu", norm_eps=1e-12,
                  type_vocab_size=0, pad_token_id=0, pooler=False, heads=("mlm",),
                  classifier_pooling="cls", classifier_transform="sequence",
                  classifier_act="relu", classifier_dropout=0.2, attention_output_dropout=0.0)

# ELECTRA (Clark et al. 2020): a BERT body with E-wide embeddings projected to H, no pooler, a
# replaced-token head without LayerNorm; the generator is a smaller body sharing all embeddings.
# The classifier uses GELU "although BERT uses tanh here" (ElectraClassificationHead).
ELECTRA = dict(vocab_size=30522, hidden_act="gelu", head_act="gelu", norm_eps=1e-12,
               type_vocab_size=2, pad_token_id=0, pooler=False, heads=("rtd",),
               classifier_pooling="cls", classifier_transform="sequence", classifier_act="gelu")

# SpanBERT (Joshi et al. 2019): a BERT body (cased vocab 28996) trained without NSP on span
# masking; the span-boundary head comes with the objective.
SPANBERT = dict(BERT, vocab_size=28996, heads=("mlm",))

# ModernBERT (Warner et al. 2024): pre-norm, bias-free LayerNorms and linears (the decoder bias
# is the only bias), GeGLU, RoPE with theta 160k on global and 10k on local layers, global
# attention every 3rd layer from layer 0 and a +-64 window elsewhere, an embedding LayerNorm
# and none before layer 0's attention, a final norm, a tied MLM decoder; one prediction head
# (dense -> act -> norm) in front of every task head. Dropout (all 0 as released): embeddings
# (embedding_dropout), attention output (= attention_dropout), inside the MLP (mlp_dropout).
MODERNBERT = dict(
    vocab_size=50368, hidden_act="gelu", head_act="gelu", mlp_type="glu", position_embedding="rope",
    type_vocab_size=0, pad_token_id=50283, norm_eps=1e-5, norm_bias=False, norm_position="pre",
    use_bias=False, hidden_dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
    attention_output_dropout=0.0, mlp_dropout_inside=True, pooler=False, heads=("mlm",),
    rope_theta=160000.0, local_rope_theta=10000.0, local_window=64, global_every=3,
    first_layer_attention_norm=False, max_position_embeddings=8192, classifier_pooling="cls",
    classifier_transform="all", classifier_act="gelu", classifier_norm=True,
    classifier_bias=False, classifier_dropout=0.0)

# EuroBERT (Boizard et al. 2025): a bidirectional Llama -- pre-RMSNorm (eps 1e-5), SwiGLU,
# bias-free linears, RoPE (theta 250k released, 10k during 2k-context pretraining),
# grouped-query attention, no embedding norm, a final norm and an untied, transform-free LM
# head; its classifier averages per-token logits ("late" pooling) after dense -> GELU.
EUROBERT = dict(
    vocab_size=128256, hidden_act="silu", mlp_type="glu", position_embedding="rope",
    type_vocab_size=0, pad_token_id=128001, norm_type="rmsnorm", norm_eps=1e-5, norm_bias=False,
    norm_position="pre", embedding_norm=False, use_bias=False, hidden_dropout=0.0,
    attention_dropout=0.0, pooler=False, heads=("mlm",), mlm_transform=False,
    tie_word_embeddings=False, decoder_bias=False, rope_theta=250000.0,
    max_position_embeddings=8192, classifier_pooling="late", classifier_transform="sequence",
    classifier_act="gelu", classifier_dropout=0.0)

FAMILIES: dict[str, dict[str, Any]] = {
    "bert": BERT, "roberta": ROBERTA, "albert": ALBERT, "distilbert": DISTILBERT,
    "electra": ELECTRA, "spanbert": SPANBERT, "modernbert": MODERNBERT, "eurobert": EUROBERT,
}


def families() -> list[str]:
  return sorted(FAMILIES)


def family_defaults(name: str) -> dict[str, Any]:
  """The family's ModelConfig values (with ``family`` itself)."""
  try:
    return dict(FAMILIES[name], family=name)
  except KeyError:
    raise ConfigError(f"unknown model.family {name!r}; known: {', '.join(families())}") from None
