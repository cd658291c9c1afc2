"""The GPU path as far as a CPU shows it, and benchmarks/device_check.py --smoke: every section
of the accelerator check runs here with tiny shapes, so the script does not rot between the
times a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax.config import model_config
from bertjax.models import Model
from bertjax.nn import attention, cudnn
from bertjax.train.flops import CHIPS, chip

ROOT = Path(__file__).resolve().parent.parent


def test_cudnn_falls_back_off_gpu_and_says_so():
  """attention_impl=cudnn on a CPU computes what ``auto`` computes (xla here) and reports the
  path that ran and why; each unsupported case has its reason."""
  ids = np.random.default_rng(0).integers(5, 1000, (2, 24)).astype(np.int32)
  pad = np.ones_like(ids, bool)
  pad[1, 17:] = False
  outs = {}
  for impl in ("cudnn", "xla"):
    cfg = model_config("bert-tiny", [f"attention_impl={impl}", "vocab_size=1000",
                                     "attention_dropout=0.0"])
    model = Model(cfg, rngs=nnx.Rngs(0))
    outs[impl] = np.asarray(model(ids, padding_mask=pad).last_hidden_state)
  np.testing.assert_array_equal(outs["cudnn"], outs["xla"])
  assert attention.attention_paths()["cudnn"] == "xla (not on a GPU)"
  q = jnp.zeros((1, 8, 2, 16), jnp.float32)
  assert cudnn.unsupported(q, window=None, active_dropout=False) == "not on a GPU"


def test_gpu_chips_have_published_peaks():
  class Device:
    def __init__(self, kind):
      self.device_kind = kind

  assert chip(Device("NVIDIA H100 80GB HBM3")).peak_flops == 989e12  # SXM, dense bf16
  assert chip(Device("NVIDIA H100 PCIe")).peak_flops == 756e12  # the longer prefix wins
  assert chip(Device("NVIDIA H200")).hbm_bytes == 141e9
  assert chip(Device("cpu")) is None
  assert all(c.peak_flops > 1e14 and c.hbm_bandwidth > 1e11 for c in CHIPS.values())


def test_device_check_smoke(tmp_path):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}  # the lent machine has one GPU
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "device_check.json").read_text())
  s = report["sections"]
  assert report["errors"] == {} and set(s) == {"parity", "steps", "input", "checkpoint", "long"}
  assert set(s["parity"]) == {"bert", "modernbert", "eurobert", "cudnn_vs_reference"}
  for family in ("bert", "modernbert", "eurobert"):  # --smoke: one per block design
    row = s["parity"][family]
    assert row["ok"] and row["max_abs_diff_float32"] <= 1e-4
    assert 0 < row["max_abs_diff_bfloat16"] < 0.5  # bf16 really ran, and is close
  assert "not on a GPU" in s["parity"]["cudnn_vs_reference"]["skipped"]
  cases = s["steps"] + s["long"]
  assert len(s["steps"]) == 3 and len(s["long"]) == 2
  for r in cases:
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1 and np.isfinite(r["loss"])
    assert r["planned_bytes"] > 0  # CPU has no memory_stats: measured is None there
  ran = {r["label"].split()[-2] if "remat" in r["label"] else r["label"].split()[-1]:
         r["attention_paths"] for r in cases}
  assert ran["cudnn"]["cudnn"].startswith("xla (not on a GPU)")  # the fallback, named
  assert ran["einsum"] == {"einsum": "einsum"} and ran["flash"]["flash"] == "flash"
  assert all(r["us_per_token"] > 0 for r in s["long"])
  assert s["input"]["tokens_per_s"] > 0 and isinstance(s["input"]["host_keeps_up"], bool)
  assert s["checkpoint"]["restored_step"] == 1 and s["checkpoint"]["gb"] > 0
  md = (tmp_path / "device_check.md").read_text()
  for heading in ("a. Forward parity", "b/c. Train steps", "d. Input pipeline",
                  "e. Orbax checkpoint", "f. Long context"):
    assert heading in md
