"""``bertjax compile``: the pretraining step compiled for Cloud TPU topologies from this CPU
machine (libtpu's compile-only devices): single slice, multislice, over budget, the real splash
kernel, the chip's peak read from the mesh. Nothing runs on a TPU device -- anything that did
would fail on compile-only devices."""

import json

import jax
import pytest

from bertjax import sharding
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.train.aot import parse_topology, topology_devices
from bertjax.train.flops import peak_flops

# unrolled: XLA's cost analysis counts a scanned loop body once, so FLOPs compare unrolled
SMALL = ["model.num_layers=2", "data.max_seq_length=128", "train.batch_size=16"]


def test_cloud_tpu_names():
  assert parse_topology("v5e-16") == ("v5e:4x4", None)
  assert parse_topology("v5litepod-16") == ("v5e:4x4", None)
  assert parse_topology("v5p-128") == ("v5:4x4x4", "megacore")  # 128 TensorCores = 64 chips
  assert parse_topology("v4-32") == ("v4:2x2x4", "megacore_dense")
  assert parse_topology("v6e-64") == ("v6e:8x8", None)
  assert parse_topology("v5e:2x4") == ("v5e:2x4", None)
  for bad in ("v5e-3", "tpu-8", "v5p-7", "v5e:four"):
    with pytest.raises(UserError, match="--topology"):
      parse_topology(bad)


def test_devices_and_peak_come_from_the_mesh():
  devices = topology_devices("v5p-8")
  assert len(devices) == 4 and devices[0].platform == "tpu"
  assert jax.devices()[0].platform == "cpu"  # the default backend is still this CPU
  mesh = sharding.make_mesh({"data": -1}, devices)
  assert peak_flops(mesh) == 4 * 459e12
  assert len(topology_devices("v5e-4", slices=2)) == 8


def _compile(tmp_path, capsys, *args):
  out = tmp_path / "report.json"
  code = main(["compile", *args, "--json", str(out)])
  text = capsys.readouterr()
  return code, json.loads(out.read_text()) if out.exists() else None, text


# (a single v5e-4 slice compiles in docs/planning.md's examples and the tpu-planning notebook)
@pytest.mark.parametrize("topology,slices,chip,hbm", [("v5p-8", 1, "v5p", 95),
                                                    ("v5e-4", 2, "v5e", 16)])
def test_compile_pretraining_step(tmp_path, capsys, topology, slices, chip, hbm):
  code, r, text = _compile(tmp_path, capsys, "bert-demo", *SMALL, "mesh.fsdp=2",
                           "--topology", topology, "--slices", str(slices),
                           "--save", str(tmp_path / "step.bin"))
  assert code == 0, text.err
  # --save: the serialized TPU executable (jax.experimental.serialize_executable)
  assert r["saved"] == str(tmp_path / "step.bin") and (tmp_path / "step.bin").stat().st_size > 10_000
  assert r["chip"] == chip and r["devices"] == 4 * slices and r["fits"]
  assert r["mesh"] == {"data": 2 * slices, "fsdp": 2, "tensor": 1}
  assert r["hbm_bytes"] == hbm * 2**30
  per = r["per_device"]
  # FSDP halves each weight matrix; Adam holds two slots per parameter
  assert per["optimizer_bytes"] == pytest.approx(2 * per["params_bytes"], rel=0.01)
  assert per["total_bytes"] >= per["params_bytes"] + per["optimizer_bytes"]
  assert 0.9 < r["xla_over_analytic"] < 1.15, r["xla_over_analytic"]  # + norms, softmax, Adam
  assert 0 < r["roofline_mfu"] < 1
  assert "fits" in text.out and f"{slices} x {topology}" in text.out
  # collectives from the TPU program: only a multislice step talks over DCN (its gradients
  # all-reduced across slices through the megascale runtime); communication widens the estimate
  dcn = [k for k in r["collectives"] if k.endswith("(DCN)")]
  assert (dcn != []) == (slices > 1) and (slices == 1 or "all-reduce (DCN)" in dcn)
  assert r["collectives"]["all-gather (ICI)"]["bytes"] > 0  # FSDP gathers its weights
  low, high = r["step_seconds_range"]
  assert r["roofline_step_seconds"] <= low <= high and (r["dcn_seconds"] > 0) == (slices > 1)
  assert 0 < r["mfu_range"][0] <= r["mfu_range"][1] <= r["roofline_mfu"]
  assert "communication: ICI" in text.out and "not modelled" in text.out


def test_over_budget_is_one_line_with_advice(tmp_path, capsys):
  # a 2M-token vocabulary replicated on every chip: 23 GiB of weights and Adam slots per v5e chip
  code, r, text = _compile(tmp_path, capsys, "bert-demo", "model.num_layers=1",
                           "model.hidden_size=1024", "model.num_heads=16",
                           "model.intermediate_size=1024", "train.batch_size=8",
                           "--vocab-size", "2000000", "--topology", "v5e-4")
  assert code == 1
  assert not r["fits"] and r["per_device"]["total_bytes"] > r["hbm_bytes"]
  assert r["per_device"]["params_bytes"] > 7 * 2**30
  advice = [line for line in text.err.splitlines() if "does not fit" in line]
  assert len(advice) == 1 and "GiB per chip" in advice[0]
  assert advice[0].index("mesh.fsdp") < advice[0].index("model.remat")  # the weights dominate


def test_splash_is_the_real_kernel_on_tpu(tmp_path, capsys):
  code, r, text = _compile(tmp_path, capsys, "modernbert-tiny", "model.scan_layers=true",
                           "data.max_seq_length=256", "train.batch_size=8",
                           "--topology", "v5e-4")
  assert code == 0, text.err
  assert r["attention_impl"] == "auto" and r["mosaic_kernels"] > 0  # Mosaic, not interpret mode
  # XLA cannot cost the kernels' FLOPs: the report adds them, so the roofline stays sane
  assert r["kernel_flops_per_device"] > 0 and "splash" in r["cost_basis"]
  assert 0.9 < r["xla_over_analytic"] < 1.15 and 0 < r["roofline_mfu"] < 1, r


def test_bad_topology_is_one_line(capsys):
  assert main(["compile", "bert-demo", "--topology", "v9-8"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--topology v9-8" in err[0]


def test_scanned_costs_equal_the_unrolled_program():
  """XLA counts a scanned loop body once; the report extrapolates unrolled 1- and 2-group
  compiles instead, which matches compiling every layer unrolled."""
  from bertjax.config import experiment_config
  from bertjax.train.aot import compile_pretraining

  small = ["model.num_layers=3", "data.max_seq_length=128", "train.batch_size=16"]
  scanned = compile_pretraining(experiment_config("bert-demo", small + ["model.scan_layers=true"]),
                                "v5e-4", eval_step=False)
  unrolled = compile_pretraining(experiment_config("bert-demo", small), "v5e-4", eval_step=False)
  assert scanned["cost_basis"].startswith("unrolled") and unrolled["cost_basis"] == "the compiled step"
  assert scanned["xla_flops_per_device"] == pytest.approx(unrolled["xla_flops_per_device"], rel=0.01)
  assert scanned["bytes_accessed_per_device"] == pytest.approx(
      unrolled["bytes_accessed_per_device"], rel=0.05)


def test_windowed_einsum_loops_are_counted_in_full():
  """On a wide fsdp-32 layer XLA:TPU makes the weight-gradient matmuls windowed einsums (a loop
  of partial matmuls overlapping the reduce-scatter) and its cost analysis counts each loop body
  once; the report counts the step compiled without them, so XLA's FLOPs (plus the splash
  kernels') match the model FLOPs."""
  from bertjax.config import experiment_config
  from bertjax.train import aot

  cfg = experiment_config("eurobert-2.1b-pretrain", [
      "model.num_layers=1", "model.scan_layers=false", "model.remat=none",
      "data.max_seq_length=256", "model.max_position_embeddings=256",  # the smallest that
      "data.max_predictions_per_seq=128", "train.batch_size=32", "data.tokenizer=corpus-bpe"])  # loops
  report = aot.compile_pretraining(cfg, "v5p-64", eval_step=False)
  # this basis is chosen only when the compiled step holds windowed-einsum loops
  # (aot.WINDOWED_EINSUM in its HLO): the program that runs keeps them
  assert "without windowed einsums" in report["cost_basis"]
  assert 0.98 <= report["xla_over_analytic"] <= 1.1

