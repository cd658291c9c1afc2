"""Model FLOPs for MFU (MaxText convention: matmul FLOPs, attention scores and values
included, embedding lookups excluded; forward + backward = 3 x forward). The MFU metric counts
every matmul FLOP the step executes: for ELECTRA the generator as well as the discriminator,
for distillation the frozen teacher's forward pass as well as the student's. Recomputation
(remat) is not counted: it is model FLOPs, not hardware FLOPs."""

from __future__ import annotations

from typing import NamedTuple

from bertjax.config import ExperimentConfig, ModelConfig


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, mlm_fraction: float) -> float:
  """One forward pass, per token: the encoder (local layers over their window, as MaxText
  counts sliding-window layers), the MLM head on ``mlm_fraction`` of the tokens
  (logits only at masked positions, or at every token), ELECTRA's replaced-token head."""
  h, f = cfg.hidden_size, cfg.intermediate_size
  n, kv, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  proj = h * (n + 2 * kv) * d + n * d * h  # q, k, v, out
  mlp = h * f * (3 if cfg.mlp_type == "glu" else 2)
  # matmuls + scores + values; a local layer attends over its window only
  forward = sum(2 * (proj + mlp) + 2 * 2 * _attended(cfg, b, seq_len) * n * d
                for b in range(cfg.num_layers))
  if cfg.embed_size != h:
    forward += 2 * cfg.embed_size * h
  if "mlm" in cfg.heads:  # transform + decoder
    e = cfg.embed_size
    forward += 2 * ((h * e if cfg.mlm_transform else 0) + e * cfg.vocab_size) * mlm_fraction
  if "rtd" in cfg.heads:  # dense + 1-unit prediction at every token
    forward += 2 * (h * h + h)
  return forward


def kernel_attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of the attention scores and values alone (q k^T and p v), local
  layers over their window only: what a fused attention kernel (splash) computes. XLA's cost
  analysis cannot see inside a Pallas/Mosaic kernel, so ``bertjax compile`` adds these."""
  n, d = cfg.num_heads, cfg.dim_per_head
  return sum(4.0 * n * d * _attended(cfg, b, seq_len) for b in range(cfg.num_layers))


def _attended(cfg: ModelConfig, layer: int, seq_len: int) -> int:
  """Keys each query attends to in ``layer``: the whole sequence, or a local layer's window."""
  return min(seq_len, 2 * cfg.local_window + 1) if cfg.is_local_layer(layer) else seq_len


def train_flops_per_token(cfg: ModelConfig, seq_len: int, predictions_per_seq: int) -> float:
  """Forward + backward of one model trained with MLM at ``predictions_per_seq`` positions."""
  return 3.0 * forward_flops_per_token(cfg, seq_len, predictions_per_seq / seq_len)


def step_flops_per_token(cfg: ExperimentConfig, teacher: ModelConfig | None = None) -> float:
  """Every matmul FLOP one pretraining step executes, per token, for its objective."""
  seq, preds = cfg.data.max_seq_length, cfg.data.max_predictions_per_seq
  if cfg.objective == "electra":  # discriminator on every token + generator at masked positions
    return (3.0 * forward_flops_per_token(cfg.model, seq, 0.0)
            + train_flops_per_token(cfg.model.generator(), seq, preds))
  if cfg.objective == "distill":  # the student's and the teacher's logits at every token
    if teacher is None:
      raise ValueError("distillation FLOPs need the teacher's config")
    return (3.0 * forward_flops_per_token(cfg.model, seq, 1.0)
            + forward_flops_per_token(teacher, seq, 1.0))
  return train_flops_per_token(cfg.model, seq, preds)


class Chip(NamedTuple):
  """An accelerator chip as its maker publishes it: dense bf16 peak FLOP/s, HBM bytes and
  bytes/s; for TPUs the bidirectional inter-chip interconnect (ICI) bytes/s per chip and the
  data-center network (DCN) bytes/s per chip between slices, where published (None: not)."""
  name: str
  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  ici_bandwidth: float | None = None
  dcn_bandwidth: float | None = None


_GiB = 2.0**30
# by ``device_kind`` (compile-only devices report the same); MaxText's MFU denominators.
# ICI and DCN from the Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/docs/v5e,
# /v5p, /v6e): v5e 400 GBps bidirectional ICI per chip and 2 x 100 Gbps NICs per 8-chip host
# (25 Gbps per chip); v5p 1200 GBps ICI and 50 Gbps DCN per chip; v6e 800 GBps ICI (its DCN per
# chip is not published there); the v4 page gives neither per chip.
_V5E = Chip("v5e", 197e12, 16 * _GiB, 819e9, 400e9, 25e9 / 8)
_V5P = Chip("v5p", 459e12, 95 * _GiB, 2765e9, 1200e9, 50e9 / 8)
_V6E = Chip("v6e", 918e12, 32 * _GiB, 1640e9, 800e9)
CHIPS = {
    "TPU v4": Chip("v4", 275e12, 32 * _GiB, 1228e9),
    "TPU v5 lite": _V5E,
    "TPU v5e": _V5E,
    "TPU v5p": _V5P,
    "TPU v5": _V5P,
    "TPU v6 lite": _V6E,
    "TPU v6e": _V6E,
    # NVIDIA datasheets: dense bf16 Tensor Core FLOP/s (half the "with sparsity" figure), HBM
    # in their decimal GB and TB/s. device_kind is the CUDA device name.
    "NVIDIA H100 PCIe": Chip("H100 PCIe", 756e12, 80e9, 2.0e12),
    "NVIDIA H100": Chip("H100 SXM", 989e12, 80e9, 3.35e12),  # "NVIDIA H100 80GB HBM3"
    "NVIDIA H200": Chip("H200", 989e12, 141e9, 4.8e12),
    "NVIDIA A100-SXM4-40GB": Chip("A100 40GB", 312e12, 40e9, 1.555e12),
    "NVIDIA A100-SXM4-80GB": Chip("A100 80GB", 312e12, 80e9, 2.039e12),
    "NVIDIA A100 80GB PCIe": Chip("A100 80GB PCIe", 312e12, 80e9, 1.935e12),
    "NVIDIA L4": Chip("L4", 121e12, 24e9, 0.3e12),
}

_measured: float | None = None


def chip(device) -> Chip | None:
  """The chip of ``device`` (None for a CPU or an unknown kind): longest ``device_kind`` prefix
  wins."""
  for kind, spec in sorted(CHIPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(kind):
      return spec
  return None


def peak_flops_per_device(device=None) -> float:
  """TPU or a known GPU: the published dense bf16 peak. Elsewhere: a measured f32 matmul peak
  of this host, split over its local devices (fake CPU devices share the same cores)."""
  import jax

  spec = chip(device if device is not None else jax.devices()[0])
  if spec is not None:
    return spec.peak_flops
  return measure_matmul_peak() / jax.local_device_count()


def peak_flops(mesh, per_device: float | None = None) -> float:
  """The mesh's peak FLOP/s: ``per_device`` (train.peak_flops_per_device) or its devices'
  chip (read from the mesh, so compile-only TPU meshes count as TPUs), times their count."""
  return (per_device or peak_flops_per_device(mesh.devices.flat[0])) * mesh.devices.size


def measure_matmul_peak(n: int = 2048, repeats: int = 8) -> float:
  """Best f32 GFLOP/s of a jitted n x n matmul on the default device (cached per process)."""
  global _measured
  if _measured is None:
    import time

    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      t = time.perf_counter()
      f(a).block_until_ready()
      best = min(best, time.perf_counter() - t)
    _measured = 2 * n**3 / best
  return _measured
