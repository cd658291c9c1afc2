"""Objectives: pure ``(model, batch, dropout_key, totals) -> (loss, sums)`` functions.

``totals`` are whole-batch normalisers (e.g. the number of masked tokens across all gradient-
accumulation microbatches), so accumulated gradients equal the full-batch gradient. ``sums``
are additive statistics; ``finalize`` turns them into metrics."""

from bertjax.objectives.mlm import MlmObjective

__all__ = ["MlmObjective"]
