"""ModernBERT's Hugging Face names and config.json: fused ``Wqkv`` and ``Wi = [input; gate]``
weights, ``layer_types`` / ``global_attn_every_n_layers``, per-attention-type RoPE theta, and
its one ``head`` (dense -> act -> norm) in front of the decoder and every task classifier."""

from bertjax.config import ConfigError
from bertjax.interop.adapter import HFAdapter, act_from_hf, act_to_hf, task_architecture
from bertjax.interop.names import NameTable


def _global_every(layer_types: list[str]) -> int:
  """The n with 'layer i is global iff i % n == 0' that reproduces ``layer_types``."""
  for n in range(1, len(layer_types) + 1):
    if all((t == "full_attention") == (i % n == 0) for i, t in enumerate(layer_types)):
      return n
  raise ConfigError(f"config.json layer_types {layer_types} is not 'global every n-th layer'")


def config_from_hf(d):
  layers = d["num_hidden_layers"]
  every = d.get("global_attn_every_n_layers", 3)
  layer_types = d.get("layer_types") or [
      "full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]
  rope = d.get("rope_parameters") or {}
  if d.get("attention_bias", False) != d.get("mlp_bias", False):
    raise ConfigError("config.json attention_bias and mlp_bias must agree")
  pooling = d.get("classifier_pooling", "cls")
  if pooling not in ("cls", "mean"):
    raise ConfigError(f"config.json classifier_pooling={pooling!r} is not 'cls' or 'mean'")
  return dict(
      vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=layers,
      num_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
      hidden_act=act_from_hf(d.get("hidden_activation", "gelu"), "hidden_activation"),
      head_act=act_from_hf(d.get("classifier_activation", "gelu"), "classifier_activation"),
      classifier_act=act_from_hf(d.get("classifier_activation", "gelu"), "classifier_activation"),
      classifier_pooling=pooling, classifier_bias=bool(d.get("classifier_bias", False)),
      classifier_dropout=float(d.get("classifier_dropout", 0.0)),
      max_position_embeddings=d.get("max_position_embeddings", 8192),
      pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else 0,
      norm_eps=float(d.get("norm_eps", 1e-5)), norm_bias=bool(d.get("norm_bias", False)),
      use_bias=bool(d.get("attention_bias", False)), decoder_bias=bool(d.get("decoder_bias", True)),
      rope_theta=float((rope.get("full_attention") or {}).get("rope_theta")
                       or d.get("global_rope_theta", 160000.0)),
      local_rope_theta=float((rope.get("sliding_attention") or {}).get("rope_theta")
                             or d.get("local_rope_theta", 10000.0)),
      local_window=d.get("local_attention", 128) // 2, global_every=_global_every(layer_types),
      hidden_dropout=float(d.get("mlp_dropout", 0.0)),
      attention_dropout=float(d.get("attention_dropout", 0.0)),
      attention_output_dropout=float(d.get("attention_dropout", 0.0)),  # one HF rate for both
      embedding_dropout=float(d.get("embedding_dropout", 0.0)),
      initializer_range=float(d.get("initializer_range", 0.02)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))


def config_to_hf(cfg):
  output_rate = (cfg.attention_output_dropout if cfg.attention_output_dropout is not None
                 else cfg.hidden_dropout)
  if not cfg.mlp_dropout_inside or output_rate != cfg.attention_dropout:
    raise ConfigError("ModernBERT drops inside its MLP and its attention output at "
                      "attention_dropout: set model.mlp_dropout_inside=true and "
                      "model.attention_output_dropout=model.attention_dropout to export")
  layer_types = ["sliding_attention" if cfg.is_local_layer(i) else "full_attention"
                 for i in range(cfg.num_layers)]
  return dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      hidden_activation=act_to_hf(cfg.hidden_act),
      # one HF field for the MLM head and the task head (a model has one of them)
      classifier_activation=act_to_hf(cfg.classifier_act if cfg.task_head
                                      else cfg.head_act or cfg.hidden_act),
      classifier_pooling=cfg.classifier_pooling if cfg.task_head else "cls",
      classifier_dropout=cfg.classifier_dropout or 0.0,
      max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id,
      norm_eps=cfg.norm_eps, norm_bias=cfg.norm_bias, attention_bias=cfg.use_bias,
      mlp_bias=cfg.use_bias, classifier_bias=cfg.classifier_bias, decoder_bias=cfg.decoder_bias,
      layer_types=layer_types, global_attn_every_n_layers=cfg.global_every,
      local_attention=2 * (cfg.local_window or cfg.max_position_embeddings),
      rope_parameters={"full_attention": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
                       "sliding_attention": {"rope_theta": cfg.local_rope_theta or cfg.rope_theta,
                                             "rope_type": "default"}},
      embedding_dropout=(cfg.embedding_dropout if cfg.embedding_dropout is not None
                         else cfg.hidden_dropout),
      mlp_dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout, initializer_range=cfg.initializer_range,
      tie_word_embeddings=cfg.tie_word_embeddings)


def weight_names(cfg):
  if cfg.kv_heads != cfg.num_heads:
    raise ConfigError("ModernBERT's fused Wqkv needs num_kv_heads == num_heads")
  if cfg.use_bias:
    raise ConfigError("bertjax's ModernBERT mapping covers the released bias-free models only")
  t = NameTable()
  t.embeddings(cfg, {"word": "embeddings.tok_embeddings", "norm": "embeddings.norm"})
  for i in range(cfg.num_blocks):
    o, h = f"encoder.layers.{i}", f"layers.{i}"
    if i > 0 or cfg.first_layer_attention_norm:
      t.norm(f"{o}.attention_norm", f"{h}.attn_norm", bias=cfg.norm_bias)
    t.fused([f"{o}.attention.query", f"{o}.attention.key", f"{o}.attention.value"],
            f"{h}.attn.Wqkv")
    t.linear(f"{o}.attention.out", f"{h}.attn.Wo", num_in=2, bias=False)
    t.norm(f"{o}.mlp_norm", f"{h}.mlp_norm", bias=cfg.norm_bias)
    t.fused([f"{o}.mlp.wi", f"{o}.mlp.wi_gate"], f"{h}.mlp.Wi")  # act(input) * gate
    t.linear(f"{o}.mlp.wo", f"{h}.mlp.Wo", bias=False)
  t.norm("encoder.final_norm", "final_norm", bias=cfg.norm_bias)
  if "mlm" in cfg.heads:
    t.mlm_head(cfg, {"transform": "head.dense", "norm": "head.norm", "bias": "decoder.bias",
                     "decoder": "decoder"})
  if cfg.task_head:  # every task model: head (dense -> act -> norm) -> drop -> classifier
    if cfg.classifier_pooling not in ("cls", "mean"):
      raise ConfigError(f"ModernBERT classifies from cls or mean, not {cfg.classifier_pooling!r}")
    t.task_head(cfg, transform="head.dense", norm="head.norm", output="classifier")
  return t


def architecture(cfg):
  if cfg.task_head:
    return task_architecture(cfg, "ModernBert"), False
  return ("ModernBertForMaskedLM", False) if "mlm" in cfg.heads else ("ModernBertModel", False)


ADAPTER = HFAdapter(
    family="modernbert", hf_model_type="modernbert", hf_prefix="model",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, weight_names=weight_names,
    architecture=architecture, head_keys={"mlm": "head.dense.weight"},
    decoder_key="decoder.weight")
