"""The collectives read from a compiled program's HLO: the three spellings of replica groups,
loops counted by their trip counts, and a sharded step's collective bytes equal to the analytic
volume of FSDP (the parameters gathered for the forward pass, and again for a rematerialized
backward pass; every gradient reduced once). The TPU side (ICI/DCN, multislice) is checked in
test_compile.py on the compiled TPU step."""

import jax
import numpy as np

from bertjax.train.collectives import Collective, _groups, read_collectives, shape_bytes, summarize


def test_replica_group_spellings_and_shapes():
  line = "x = f32[8] all-reduce(y), replica_groups={{0,2},{1,3}}, to_apply=%add"
  assert _groups(line, 4) == [[0, 2], [1, 3]]
  assert _groups("replica_groups=[2,4]<=[8], dimensions={0}", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert _groups("replica_groups=[4,2]<=[2,4]T(1,0), x", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert _groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, dims", 8) == [
      [0, 4], [1, 5], [2, 6], [3, 7]]
  assert _groups("source_target_pairs={{0,1},{1,0}}, x", 2) == [[0, 1], [1, 0]]
  assert _groups("replica_groups={}, x", 4) == [[0, 1, 2, 3]]
  assert shape_bytes("(bf16[128,2,64]{2,0,1:T(8,128)(2,1)}, f32[3]{0}, s32[]{:T(128)})") == (
      128 * 2 * 64 * 2 + 3 * 4 + 4)
  # ring traffic per device
  assert Collective("all-reduce", "a", 800, 8, 1, False, 1).traffic == 2 * 800 * 7 / 8
  assert Collective("all-gather", "a", 800, 8, 1, False, 1).traffic == 800 * 7 / 8


HLO = """HloModule m

%body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %p = (s32[], f32[64]) parameter(0)
  %g = f32[64]{0} get-tuple-element(%p), index=1
  %ag = f32[256]{0} all-gather(%g), replica_groups=[1,4]<=[4], dimensions={0}
  ROOT %t = (s32[], f32[64]) tuple(%i, %g)
}

%cond (p: (s32[], f32[64])) -> pred[] {
  %p = (s32[], f32[64]) parameter(0)
  %c = s32[] constant(6)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (x: f32[64]) -> f32[64] {
  %x = f32[64]{0} parameter(0)
  %w = (s32[], f32[64]) while(%t0), condition=%cond, body=%body
  ROOT %ar = f32[64]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
}
"""


def test_a_loop_body_counts_its_trip_count():
  found = {c.kind: c for c in read_collectives(HLO)}
  assert found["all-gather"].count == 6 and found["all-gather"].bytes == 256 * 4
  assert found["all-reduce"].count == 1 and found["all-reduce"].group_size == 4
  s = summarize(list(found.values()))
  assert s["all-gather (ICI)"]["bytes"] == 6 * 1024


def _fsdp_step(*overrides):
  """bert-demo at a tiny size, FSDP over the 8 CPU devices: (collectives, parameter bytes,
  bytes of the layer stack's parameters)."""
  from bertjax import sharding
  from bertjax.config import experiment_config
  from bertjax.data.pipeline import batch_spec
  from bertjax.params import flat_shapes
  from bertjax.train.planning import plan_engine
  from bertjax.train.run import plan_mesh

  cfg = experiment_config("bert-demo", [
      "model.num_layers=2", "model.hidden_size=64", "model.num_heads=2",
      "model.intermediate_size=256", "model.vocab_size=512", "model.max_position_embeddings=64",
      "train.batch_size=16", "data.max_seq_length=32",
      "mesh.fsdp=8", "mesh.data=1", *overrides])
  mesh = plan_mesh(cfg.mesh, jax.devices()[:8], train_batch_size=16)
  with sharding.use_mesh(mesh, cfg.mesh.rules):
    shapes = batch_spec(cfg.data, batch_size=16, vocab_size=cfg.model.vocab_size,
                        sbo_max_targets=cfg.model.sbo_max_targets)
    engine, _ = plan_engine(cfg, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
    hlo = engine.train_step.lower(engine.abstract_state(),
                                  engine.abstract_batch(shapes)).compile().as_text()
  sizes = {k: 4 * int(np.prod(v)) for k, v in flat_shapes(engine.abstract_state().params).items()}
  layers = sum(v for k, v in sizes.items() if ".layers." in f".{k}.")
  return read_collectives(hlo, list(mesh.devices.flat)), sum(sizes.values()), layers


def test_fsdp_collective_bytes_equal_the_analytic_volume():
  """A scanned, fully rematerialized FSDP step: all-gathers move every parameter once for the
  forward pass and the layers' again for the backward pass's recompute (inside the scan's
  loop, counted once per layer); the gradient reduction (all-reduce or reduce-scatter) moves
  every parameter once. f32 here (CPU)."""
  found, params, layers = _fsdp_step("model.remat=full", "model.scan_layers=true")
  volume = lambda kinds: sum(c.bytes * c.count for c in found if c.kind in kinds)
  gathered = params + layers
  assert 0.9 < volume({"all-gather"}) / gathered < 1.1, (volume({"all-gather"}), gathered)
  assert 0.9 < volume({"all-reduce", "reduce-scatter"}) / params < 1.1
  assert not any(c.crosses_slices for c in found)
  # the layer stack's collectives sit in a while body that runs once per layer
  assert sum(c.count for c in found) > len(found)
