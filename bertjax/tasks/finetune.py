"""``finetune(cfg)``: fine-tune a pretrained body for ``cfg.task``, once per seed.

The task type (``tasks/types/``) decides how: a ``HeadTask`` trains a task head on labeled
examples (``supervised.py``), ``sentence_embedding`` trains the body contrastively
(``embedding.py``). Both run on the run scaffold and the shared engine, check everything before
the run folder is touched, resume as ``run_dir.claim_run_dir`` says, and write the per-seed
dev/test metrics and their medians to ``run_dir/summary.json``. Serving a fine-tuned folder is
``serve.py``.
"""

from __future__ import annotations

import threading

from bertjax.config import FinetuneConfig
from bertjax.tasks.types import resolve


def finetune(cfg: FinetuneConfig, *, devices=None, quiet: bool = False,
             stop_event: threading.Event | None = None, allow_config_change: bool = False) -> dict:
  """Fine-tune once per seed; returns the summary (``summary.json``)."""
  task = resolve(cfg)
  return task.train(cfg, devices=devices, quiet=quiet, stop_event=stop_event,
                    allow_config_change=allow_config_change)
