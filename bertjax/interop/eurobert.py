"""EuroBERT's Hugging Face names (Llama layout: ``q_proj``/``k_proj``/..., ``gate_proj`` /
``up_proj`` / ``down_proj``, ``input_layernorm``) and config.json (``rope_parameters``,
``num_key_value_heads``, ``classifier_pooling`` bos/mean/late)."""

from bertjax.config import ConfigError
from bertjax.interop.adapter import HFAdapter, act_from_hf, act_to_hf, task_architecture
from bertjax.interop.names import NameTable, Same

_POOLING_FROM_HF = {"bos": "cls", "mean": "mean", "late": "late"}
_POOLING_TO_HF = {v: k for k, v in _POOLING_FROM_HF.items()}

BLOCK = {
    "attention.query": "self_attn.q_proj", "attention.key": "self_attn.k_proj",
    "attention.value": "self_attn.v_proj", "attention.out": "self_attn.o_proj",
    "attention_norm": "input_layernorm", "mlp.wi": "mlp.gate_proj", "mlp.wi_gate": "mlp.up_proj",
    "mlp.wo": "mlp.down_proj", "mlp_norm": "post_attention_layernorm",
}


def config_from_hf(d):
  if d.get("attention_bias", False) != d.get("mlp_bias", False):
    raise ConfigError("config.json attention_bias and mlp_bias must agree")
  rope = d.get("rope_parameters") or {}
  heads = d["num_attention_heads"]
  pooling = d.get("classifier_pooling", "late")
  if pooling not in _POOLING_FROM_HF:
    raise ConfigError(f"config.json classifier_pooling={pooling!r} is not one of "
                      f"{sorted(_POOLING_FROM_HF)}")
  head_dim = d.get("head_dim")
  return dict(
      vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
      num_heads=heads, num_kv_heads=d.get("num_key_value_heads", heads),
      head_dim=None if head_dim in (None, d["hidden_size"] // heads) else head_dim,
      intermediate_size=d["intermediate_size"], hidden_act=act_from_hf(d.get("hidden_act", "silu")),
      max_position_embeddings=d.get("max_position_embeddings", 8192),
      pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else 0,
      norm_eps=float(d.get("rms_norm_eps", 1e-5)),
      rope_theta=float(rope.get("rope_theta") or d.get("rope_theta", 10000.0)),
      use_bias=bool(d.get("attention_bias", False)), decoder_bias=bool(d.get("mlp_bias", False)),
      attention_dropout=float(d.get("attention_dropout", 0.0)),
      initializer_range=float(d.get("initializer_range", 0.02)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      classifier_pooling=_POOLING_FROM_HF[pooling])


def config_to_hf(cfg):
  return dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
      intermediate_size=cfg.intermediate_size, hidden_act=act_to_hf(cfg.hidden_act),
      max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id,
      rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"},
      attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias, attention_dropout=cfg.attention_dropout,
      initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_word_embeddings,
      classifier_pooling=_POOLING_TO_HF.get(cfg.classifier_pooling, "late"))


def weight_names(cfg):
  if cfg.decoder_bias != cfg.use_bias and "mlm" in cfg.heads:
    raise ConfigError("EuroBERT's lm_head has a bias exactly when the model's linears do")
  t = NameTable()
  t.embeddings(cfg, {"word": "embed_tokens"})
  for i in range(cfg.num_blocks):
    t.block(f"encoder.layers.{i}", f"layers.{i}", BLOCK, cfg)
  t.norm("encoder.final_norm", "norm", bias=False)
  if "mlm" in cfg.heads:
    if cfg.tie_word_embeddings:
      raise ConfigError("EuroBERT's LM head is untied (model.tie_word_embeddings=false)")
    t.linear("mlm.decoder", "lm_head", bias=False, body=False)
    if cfg.decoder_bias:
      t.add("mlm.bias", "lm_head.bias", Same(), body=False)
  if cfg.task_head == "classifier":  # dense -> GELU -> classifier, no dropout
    if cfg.classifier_pooling not in _POOLING_TO_HF:
      raise ConfigError(f"EuroBERT classifies with cls, mean or late pooling, "
                        f"not {cfg.classifier_pooling!r}")
    t.task_head(cfg, transform="dense", output="classifier")
  elif cfg.task_head:
    t.task_head(cfg, output="qa_outputs" if cfg.task_head == "qa" else "classifier")
  return t


def architecture(cfg):
  if cfg.task_head == "qa":
    raise ConfigError("transformers has no EuroBertForQuestionAnswering to export to")
  if cfg.task_head:
    return task_architecture(cfg, "EuroBert"), False
  return ("EuroBertForMaskedLM", False) if "mlm" in cfg.heads else ("EuroBertModel", False)


ADAPTER = HFAdapter(
    family="eurobert", hf_model_type="eurobert", hf_prefix="model",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture, head_keys={"mlm": "lm_head.weight"})
