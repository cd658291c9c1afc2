"""Presets resolve to the published architectures; overrides and bad input behave."""

import math
from pathlib import Path

import pytest
import torch
import transformers as T
from flax import nnx

from bertjax.config import (ConfigError, MeshConfig, apply_overrides, experiment_config,
                            finetune_config, model_config, presets_dir)
from bertjax.interop import get_adapter
from bertjax.models import Model
from bertjax.params import flat_shapes

PRESETS = sorted(p.stem for p in (presets_dir() / "model").glob("*.yaml"))
PUBLISHED = [p for p in PRESETS if not p.endswith("-tiny")]


def test_every_family_has_published_and_tiny_presets():
  for family in ("bert", "roberta", "albert", "distilbert", "electra", "spanbert", "modernbert",
                 "eurobert"):
    assert f"{family}-tiny" in PRESETS
  assert {"bert-base", "bert-large", "roberta-base", "roberta-large", "albert-base", "albert-large",
          "albert-xlarge", "albert-xxlarge", "distilbert-base", "electra-small", "electra-base",
          "electra-large", "spanbert-base", "spanbert-large", "modernbert-base", "modernbert-large",
          "eurobert-210m", "eurobert-610m", "eurobert-2.1b"} <= set(PUBLISHED)


@pytest.mark.parametrize("preset", PUBLISHED)
def test_preset_parameter_count_equals_transformers(preset):
  """Same config through export's config mapping: the HF class has exactly our parameters."""
  cfg = model_config(preset)
  family = get_adapter(cfg.family)
  shapes = flat_shapes(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0))))
  ours = sum(math.prod(s) for k, s in shapes.items()
             if not k.startswith(("generator.", "generator_mlm.")))
  if not family.architecture(cfg)[1]:
    ours -= sum(math.prod(s) for k, s in shapes.items() if k.startswith("encoder.pooler."))
  hf_config = T.AutoConfig.for_model(family.hf_model_type, **family.config_to_hf(cfg))
  with torch.device("meta"):
    hf = getattr(T, family.architecture(cfg)[0])(hf_config)
  assert ours == sum(p.numel() for p in hf.parameters())


def test_published_sizes():
  assert model_config("bert-base").num_layers == 12
  assert model_config("roberta-base").max_position_embeddings == 514
  assert model_config("roberta-base").norm_eps == 1e-5
  albert = model_config("albert-xxlarge")
  assert (albert.hidden_size, albert.num_heads, albert.embed_size, albert.num_blocks) == (4096, 64, 128, 1)
  electra = model_config("electra-base")
  assert electra.generator().hidden_size == 256 and electra.generator().num_heads == 4
  assert model_config("electra-small").generator().hidden_size == 64
  assert model_config("spanbert-base").vocab_size == 28996
  assert model_config("distilbert-base").type_vocab_size == 0
  mb = model_config("modernbert-base")
  assert [mb.is_local_layer(i) for i in range(4)] == [False, True, True, False]
  assert (mb.layer_theta(0), mb.layer_theta(1), mb.local_window) == (160000.0, 10000.0, 64)
  eb = model_config("eurobert-610m")
  assert (eb.kv_heads, eb.dim_per_head, eb.norm_type, eb.tie_word_embeddings) == (6, 64, "rmsnorm", False)


def test_overrides_apply_and_validate():
  cfg = model_config("bert-base", ["num_layers=3", "hidden_dropout=0.0", "heads=[mlm]"])
  assert (cfg.num_layers, cfg.hidden_dropout, cfg.heads) == (3, 0.0, ("mlm",))
  assert cfg.norm_eps == 1e-12  # family default kept


@pytest.mark.parametrize("override,message", [
    ("num_layayers=3", r"unknown config key num_layayers; did you mean num_layers\?"),
    ("num_layers=abc", r"num_layers: expected an integer, got 'abc'"),
    ("hidden_size=100", r"hidden_size=100 is not divisible by model.num_heads=12"),
    ("hidden_act=swish", r"hidden_act: 'swish' is not one of"),
    ("heads=[mlm,nsp,sop]", r"nsp or sop, not both"),
    ("num_kv_heads=5", r"num_heads=12 is not a multiple of model.num_kv_heads=5"),
    ("hidden_dropout=1.5", r"hidden_dropout must be in \[0, 1\)"),
    ("family=gpt", r"unknown model.family 'gpt'"),
    ("num_layers", r"not of the form key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
  with pytest.raises(ConfigError, match=message) as e:
    model_config("bert-base", [override])
  assert "\n" not in str(e.value)


def test_unknown_preset_suggests_a_name(tmp_path):
  with pytest.raises(ConfigError, match="did you mean bert-base"):
    model_config("bert-bsae")
  bad = tmp_path / "bad.yaml"
  bad.write_text("family: bert\nnum_layer: 2\n")
  with pytest.raises(ConfigError, match="unknown config key num_layer"):
    model_config(str(bad))
  with pytest.raises(ConfigError, match="does not exist"):
    model_config(str(tmp_path / "missing.yaml"))


def test_yaml_file_preset(tmp_path):
  f = tmp_path / "m.yaml"
  f.write_text("family: roberta\nhidden_size: 64\nnum_heads: 4\nnum_layers: 1\n")
  cfg = model_config(str(f), ["intermediate_size=128"])
  assert (cfg.family, cfg.position_offset, cfg.intermediate_size) == ("roberta", 2, 128)


def test_nested_overrides_on_a_section():
  mesh = apply_overrides(MeshConfig(), ["tensor=2", "fsdp=2"])
  assert (mesh.data, mesh.fsdp, mesh.tensor) == (-1, 2, 2)
  with pytest.raises(ConfigError, match="unknown config key tensr"):
    apply_overrides(MeshConfig(), ["tensr=2"])


EXPERIMENTS = sorted(p.stem for p in (presets_dir() / "experiments").glob("*.yaml"))
TASKS = sorted(p.stem for p in (presets_dir() / "tasks").glob("*.yaml"))


@pytest.mark.parametrize("preset", EXPERIMENTS)
def test_every_pretraining_preset_builds_its_abstract_train_state(preset):
  """Each shipped experiment resolves and plans its sharded train state and step from shapes
  alone (no compile, nothing allocated): Adam's two slots mirror every trained parameter."""
  import jax

  from bertjax import sharding
  from bertjax.data.pipeline import batch_spec
  from bertjax.train.planning import plan_engine

  cfg = experiment_config(preset)
  if cfg.objective == "distill":  # the student's shapes come from a teacher folder
    from bertjax.train.planning import distillation_config

    with pytest.raises(ConfigError, match="distill.teacher"):
      distillation_config(cfg)
    return
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  with sharding.use_mesh(mesh, cfg.mesh.rules):
    shapes = batch_spec(cfg.data, batch_size=cfg.train.batch_size,
                        vocab_size=cfg.model.vocab_size, sbo_max_targets=cfg.model.sbo_max_targets)
    engine, _ = plan_engine(cfg, {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()})
  state = engine.abstract_state()
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  slots = sum(math.prod(x.shape) for x in jax.tree.leaves(state.opt_state) if x.shape)
  assert params == sum(math.prod(s) for s in flat_shapes(
      nnx.eval_shape(lambda: Model(cfg.model, rngs=nnx.Rngs(0)))).values())
  assert slots == 2 * params
  assert state.total_steps.shape == () and engine.total_steps == cfg.train.steps
  expected = {"bert-base-pretrain": 110e6, "bert-large-pretrain": 336e6}
  if preset in expected:  # BERT's published sizes (30,522 entries, MLM and NSP heads)
    assert params == pytest.approx(expected[preset], rel=0.05), params


@pytest.mark.parametrize("preset", TASKS)
def test_every_task_preset_resolves(preset):
  from bertjax.tasks.types import resolve

  cfg = finetune_config(preset)
  task = resolve(cfg)  # a registered task type, the preset's checks and metric included
  assert task.name in ("classification", "multi_label", "regression", "token_classification",
                       "qa", "sentence_embedding")
  assert task.metric(cfg) and cfg.train.seeds


def test_the_readme_states_the_suite_size(request):
  """The README's test count is the collected suite's (checked when the whole suite runs)."""
  import re

  root = Path(__file__).resolve().parent.parent
  args = [Path(a).resolve() for a in request.config.args]
  if args and args != [root / "tests"] or request.config.option.keyword:
    pytest.skip("only a run of the whole suite knows its size")
  stated = re.search(r"(\d+) tests \(`tests/test_config.py`", (root / "README.md").read_text())
  assert stated and int(stated.group(1)) == len(request.session.items)
