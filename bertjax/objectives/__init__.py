"""Objectives: pure ``(model, batch, dropout_key, totals) -> (loss, sums)`` functions.

``totals`` are whole-batch normalisers (e.g. the number of masked tokens across all gradient-
accumulation microbatches), so accumulated gradients equal the full-batch gradient. ``sums``
are additive statistics; ``finalize`` turns them into metrics."""

from bertjax.config import ConfigError
from bertjax.objectives.distill import DistillObjective
from bertjax.objectives.electra import ElectraObjective
from bertjax.objectives.mlm import MlmObjective

__all__ = ["DistillObjective", "ElectraObjective", "MlmObjective", "check_objective",
           "make_objective"]


def check_objective(cfg) -> None:
  """The objective an ExperimentConfig names must suit its model (checked before a run starts)."""
  if cfg.objective == "electra":
    if not cfg.model.generator_width_fraction or "rtd" not in cfg.model.heads:
      raise ConfigError("objective=electra needs model.generator_width_fraction > 0 and the rtd "
                        "head")
  elif cfg.objective == "mlm" and "mlm" not in cfg.model.heads:
    raise ConfigError(f"objective=mlm needs the mlm head (model.heads={list(cfg.model.heads)})")


def make_objective(cfg, teacher_graphdef=None):
  """The objective an ExperimentConfig names, checked against its model."""
  check_objective(cfg)
  if cfg.objective == "distill":
    return DistillObjective(teacher_graphdef, cfg.distill)
  return ElectraObjective() if cfg.objective == "electra" else MlmObjective()
