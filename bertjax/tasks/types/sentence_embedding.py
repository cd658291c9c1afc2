"""``task: sentence_embedding``: a sentence encoder trained contrastively on pairs or triplets
(``tasks/embedding.py``: data, the training loop, retrieval evaluation).

No task head: the model is the body with a pooling and a normalisation. Dev metrics: each dev
anchor's positive retrieved among all dev positives -- recall@1/10, MRR@10, nDCG@10.
"""

from __future__ import annotations

from bertjax.config import ConfigError
from bertjax.tasks.embedding import finetune_embeddings
from bertjax.tasks.types.base import TaskType


class SentenceEmbedding(TaskType):
  name = "sentence_embedding"
  metrics = ("recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10")

  def check(self, cfg):
    if cfg.train.grad_accum_steps != 1:
      raise ConfigError("task=sentence_embedding: train.grad_accum_steps would split the "
                        "in-batch negatives; use embedding.chunk (cached gradients) instead")
    if cfg.embedding.chunk and cfg.train.batch_size % cfg.embedding.chunk:
      raise ConfigError(f"embedding.chunk={cfg.embedding.chunk} must divide "
                        f"train.batch_size={cfg.train.batch_size}")

  def train(self, cfg, **run):
    return finetune_embeddings(cfg, self, **run)


TYPE = SentenceEmbedding()
