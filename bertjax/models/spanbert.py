"""SpanBERT (Joshi et al. 2019): a BERT body (cased vocab 28996) trained without NSP on span
masking; its checkpoints are plain HF BERT. The span-boundary head comes with the objective."""

import dataclasses

from bertjax.models import bert
from bertjax.models.registry import register

FAMILY = register(dataclasses.replace(
    bert.FAMILY, name="spanbert",
    defaults=dict(bert.DEFAULTS, vocab_size=28996, heads=("mlm",))))
