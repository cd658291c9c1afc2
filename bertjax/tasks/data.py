"""A task's splits as model-ready arrays (``SplitData``), and the training batches over them.

Data flows one way: files -> examples (formats.py) -> arrays (a task type's ``split``:
features.py / qa.py) -> logits (the model) -> predictions and metrics (the task type's
``evaluate``: metrics.py).
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from bertjax.config import FinetuneConfig
from bertjax.data.buckets import LengthGroupedSampler, choose_buckets
from bertjax.data.tokenizer import Tokenizer
from bertjax.tasks.formats import TaskDataError, check_labels, read_split
from bertjax.tasks.qa import QaFeatures

MODEL_INPUTS = ("input_ids", "token_type_ids", "padding_mask")


def task_buckets(cfg: FinetuneConfig, train_lengths: np.ndarray) -> tuple[int, ...]:
  """``data.buckets`` (with max_seq_length), or ``data.bucket_count`` from the train lengths."""
  d = cfg.data
  if d.buckets:
    return tuple(sorted(set(d.buckets) | {d.max_seq_length}))
  return choose_buckets(train_lengths, d.max_seq_length, d.bucket_count)


@dataclasses.dataclass
class SplitData:
  name: str
  examples: list[dict]
  arrays: dict[str, np.ndarray]  # model inputs + targets, one row per feature
  word_starts: list[np.ndarray] | None = None  # token classification
  qa: QaFeatures | None = None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  @property
  def lengths(self) -> np.ndarray:
    return self.arrays["padding_mask"].sum(1)


def encode(examples: list[dict], name: str, cfg: FinetuneConfig, task, tokenizer: Tokenizer,
           labels: tuple[str, ...]) -> SplitData:
  """Examples -> ``SplitData`` by ``task`` (a ``HeadTask``)."""
  if not examples:
    raise TaskDataError(f"data.{name}: no examples in {getattr(cfg.data, name)}")
  return task.split(name, examples, cfg, tokenizer, labels)


def load_split(name: str, cfg: FinetuneConfig, task, tokenizer: Tokenizer,
               labels: tuple[str, ...]) -> SplitData:
  """One split read, its labels checked against ``labels``, and encoded."""
  examples = read_split(name, task, cfg.data)
  check_labels(examples, task, labels, name)
  return encode(examples, name, cfg, task, tokenizer, labels)


class _TaskDataset:
  """(epoch, index, bucket) -> one training row, its per-token arrays cut to their bucket;
  picklable for grain."""

  def __init__(self, arrays: dict[str, np.ndarray], per_token: dict[str, int]):
    self.arrays, self.per_token = arrays, per_token  # key -> its column of the lengths

  def __call__(self, item):
    _, index, bucket = item
    buckets = bucket if isinstance(bucket, tuple) else (bucket,)
    return {k: v[index, :buckets[self.per_token[k]]] if k in self.per_token else v[index]
            for k, v in self.arrays.items()}


def train_iterator(arrays: dict[str, np.ndarray], batch_size: int, seed: int, *,
                   buckets: tuple[int, ...], per_token: tuple[str, ...] | dict[str, int],
                   group: bool = True, lengths: np.ndarray | None = None):
  """Epoch-shuffled batches of this process's rows, rows of similar length together and each
  batch padded to its bucket (grain; the state goes into checkpoints). ``per_token``: the arrays
  with a length axis, cut to the bucket of ``padding_mask``'s lengths; or, with ``lengths``
  [n, columns], ``{key: column}``: each column's arrays cut to that column's own bucket (a
  pair's short anchors are not padded to its long positives)."""
  local = batch_size // jax.process_count()
  if lengths is None:
    lengths = arrays["padding_mask"].sum(1)
  if not isinstance(per_token, dict):
    per_token = dict.fromkeys(per_token, 0)
  sampler = LengthGroupedSampler(lengths, seed, buckets, group=group, local_batch=local,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  ds = grain.MapDataset.source(sampler).map(_TaskDataset(arrays, per_token)).batch(
      local, drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
