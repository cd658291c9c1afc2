"""``bertjax plan``: the plans it enumerates, the cheap model's scaling of a calibration, the
YAML it writes, and one real search for a Cloud TPU slice from this CPU machine (libtpu's
compile-only devices)."""

import pytest
import yaml

from bertjax.cli import main
from bertjax.config import experiment_config
from bertjax.train.flops import CHIPS
from bertjax.train.plan import Calibration, CostModel, Plan, baseline, enumerate_plans, write_plan

V5E = CHIPS["TPU v5e"]


def test_every_plan_splits_the_chips_and_the_batch():
  cfg = experiment_config("bert-large-pretrain")
  plans = enumerate_plans(cfg, chips=16, slices=1, global_batch=1024)
  assert {p.data * p.fsdp * p.tensor for p in plans} == {16}
  assert all(1024 % (p.accum * p.data * p.fsdp) == 0 for p in plans)
  assert all(16 % p.tensor == 0 and p.tensor <= 8 for p in plans)  # 16 heads: any of 1..8
  assert {p.remat for p in plans} == {"none", "dots", "names", "full"}
  # BERT keeps attention dropout: only the einsum path runs it (splash and XLA's have none)
  assert {p.attention for p in plans} == {"einsum"} and all(p.scan for p in plans)
  assert {p.accum for p in plans if p.mesh == (16, 1, 1)} == {1, 2, 4, 8, 16, 32, 64}
  # the preset's own configuration is one of them
  given = baseline(cfg, 16, 1)
  assert given == Plan(4, 4, 1, "names", 1, "einsum", True, 1024) and given in plans
  # multislice: data spans the slices, fsdp and tensor stay inside one
  two = enumerate_plans(cfg, chips=4, slices=2, global_batch=64)
  assert two and all(p.data % 2 == 0 and p.fsdp * p.tensor * p.data == 8 for p in two)
  # the largest batch that fits: one microbatch per step, powers of two per chip
  most = enumerate_plans(cfg, chips=4, slices=1, global_batch=None, max_per_chip=8)
  assert {p.accum for p in most} == {1}
  assert {p.per_chip for p in most if p.tensor == 1} == {1, 2, 4, 8}


def _model():
  cfg = experiment_config("bert-base-pretrain")
  calibration = Calibration("names", "einsum", 8, temp=(0.3e9, 0.5e9), flops=(1e12, 2e12),
                            bytes=(1e10, 2e10), ici=(1e8, 2e8), dcn=(0.0, 0.0), kernels=False,
                            seconds=1.0)
  # (state, parameters) bytes per chip of each mesh; (1, 8, 1) is the calibration's
  state = {(8, 1, 1): (12e9, 4e9), (1, 8, 1): (1.5e9, 0.5e9), (2, 2, 2): (3e9, 1e9)}
  return cfg, CostModel(cfg, V5E, 8, 1, {("names", "einsum"): calibration}, state)


def test_the_cheap_model_scales_its_calibration():
  cfg, model = _model()
  groups = cfg.model.num_layers  # BERT: one layer per group
  assert model.groups == groups
  # the calibration's own setting: 8 sequences per chip, fsdp over the 8 chips. Its temp at
  # full depth (the fixed part, then one group's difference per group) less its gradient shard
  # is activations; the plan's temp is those plus its own gradient shard
  activations = 0.1e9 + groups * 0.2e9 - 0.5e9
  fsdp = model.estimate(Plan(1, 8, 1, "names", 1, "einsum", True, 64))
  assert fsdp.total_bytes == pytest.approx(1.5e9 + activations + 0.5e9) and fsdp.fits
  assert fsdp.compute_seconds == pytest.approx(groups * 1e12 / V5E.peak_flops)
  assert fsdp.hbm_seconds == pytest.approx(groups * 1e10 / V5E.hbm_bandwidth)
  assert fsdp.ici_seconds == pytest.approx(groups * 1e8 / (V5E.ici_bandwidth / 2))
  # four microbatches of 2 sequences: a quarter of the activations, the same work per step,
  # the weights gathered (and gradients reduced) once per microbatch
  accum = model.estimate(Plan(1, 8, 1, "names", 4, "einsum", True, 64))
  assert accum.total_bytes == pytest.approx(1.5e9 + activations / 4 + 0.5e9)
  assert accum.compute_seconds == pytest.approx(fsdp.compute_seconds)
  assert accum.ici_seconds == pytest.approx(4 * fsdp.ici_seconds)
  # pure data parallel: replicated state and gradients (16 GiB chip: no room), no gathers, a
  # ring all-reduce of 4 GB of gradients; the optimizer update reads and writes 8x the state
  data = model.estimate(Plan(8, 1, 1, "names", 1, "einsum", True, 64))
  assert data.total_bytes == pytest.approx(12e9 + activations + 4e9) and not data.fits
  assert data.ici_seconds == pytest.approx(2 * 4e9 * 7 / 8 / (V5E.ici_bandwidth / 2))
  update = lambda state: 28 / 12 * state  # Adam: read p, g, m, v; write p, m, v
  assert data.hbm_seconds == pytest.approx(
      (groups * 1e10 - update(1.5e9) + update(12e9)) / V5E.hbm_bandwidth)
  # tensor 2: per-layer temp halved, the fsdp ring of 2 (of 8) and a data ring of 2, and the
  # activations' all-reduces: (2 + 2 + 2 recompute) per layer of 16 x 128 x 768 bf16
  mixed = model.estimate(Plan(2, 2, 2, "names", 1, "einsum", True, 64))
  assert mixed.total_bytes == pytest.approx(3e9 + (0.1e9 + groups * 0.1e9 - 0.5e9) * 2 + 1e9)
  fsdp_ring = (1e8 * groups) * (1 / 2) / (7 / 8) / 2
  act = 16 * cfg.data.max_seq_length * 768 * 2
  assert cfg.data.max_seq_length == 128
  expected = fsdp_ring + 2 * 1e9 * 1 / 2 + 6 * groups * 2 * act * 1 / 2
  assert mixed.ici_seconds == pytest.approx(expected / (V5E.ici_bandwidth / 2))
  # the range: communication hidden behind the roofline ... not hidden
  low, high = mixed.step_range
  roof = max(mixed.compute_seconds, mixed.hbm_seconds)
  assert low == pytest.approx(max(roof, mixed.ici_seconds))
  assert high == pytest.approx(roof + mixed.ici_seconds)
  assert 0 < mixed.mfu_range[0] <= mixed.mfu_range[1] < 1
  # a compiled plan that needed twice the predicted temp doubles its policy's temp from then on
  model.learn(fsdp, 1.5e9 + 2 * (activations + 0.5e9))
  assert model.estimate(fsdp.plan).total_bytes == pytest.approx(1.5e9 + 2 * (activations + 0.5e9))
  assert model.estimate(accum.plan).total_bytes == pytest.approx(
      1.5e9 + 2 * (activations / 4 + 0.5e9))
  # a policy without a calibration (or whose calibration failed) is not modelled
  assert model.estimate(Plan(1, 8, 1, "full", 1, "einsum", True, 64)) is None


def test_the_written_plan_is_a_config_pretrain_takes(tmp_path):
  report = {"best": {"plan": "d1/f8/t1 full 64x1 einsum", "step_seconds_range": [0.1, 0.2],
                     "total_bytes": 2**33,
                     "overrides": Plan(1, 8, 1, "full", 2, "einsum", True, 64).overrides()},
            "topology": "v5e-8", "slices": 1, "hbm_bytes": 2**34}
  path = write_plan(report, "bert-base-pretrain", ["data.source=corpus"], tmp_path / "p.yaml")
  assert path.read_text().startswith("# bertjax plan bert-base-pretrain --topology v5e-8")
  cfg = experiment_config(str(path))
  assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 8, 1)
  assert cfg.model.remat == "full" and cfg.model.attention_impl == "einsum"
  assert (cfg.train.batch_size, cfg.train.grad_accum_steps) == (64, 2)
  assert cfg.data.source == "corpus" and cfg.model.hidden_size == 768  # the preset's, kept
  assert yaml.safe_load(path.read_text())["name"] == "bert-base-pretrain"


def test_bad_plan_arguments_are_one_line(capsys, tmp_path):
  assert main(["plan", "bert-demo", "--topology", "v5e-4", "--remat", "some"]) == 2
  assert "some: choose from none, dots, names, full" in capsys.readouterr().err
  (tmp_path / "taken.yaml").write_text("x")
  assert main(["plan", "bert-demo", "--topology", "v5e-4", "--write",
               str(tmp_path / "taken.yaml")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "taken.yaml" in err[0]
  assert main(["plan", "bert-demo", "--topology", "v5e-4", "--write",
               str(tmp_path / "no" / "plan.yaml")]) == 2
  assert "no folder" in capsys.readouterr().err
  assert main(["plan", "bert-demo", "model.remat=sometimes", "--topology", "v5e-4"]) == 2
  assert "model.remat" in capsys.readouterr().err
  # a distillation student takes its shape from the teacher, not from the plan's model.*
  assert main(["plan", "distilbert-demo", "--topology", "v5e-4"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "objective=distill" in err[0]


def test_a_mesh_the_torus_cannot_lay_out_is_one_line():
  from bertjax.errors import UserError
  from bertjax.sharding import make_mesh
  from bertjax.train.aot import topology_devices

  devices = topology_devices("v5e-16")  # a 4x4 torus: 1, 4 or 16 chips per mesh axis
  assert make_mesh({"data": 4, "fsdp": 4}, devices).shape["fsdp"] == 4
  with pytest.raises(UserError, match=r"torus dimensions \(4x4"):
    make_mesh({"data": 2, "fsdp": 8}, devices)
