"""Length buckets: pad each batch only to the smallest of a few static lengths that holds its
longest row, so short inputs cost short compute and XLA compiles once per bucket.

* ``choose_buckets``: the lengths, from the data's length distribution.
* ``LengthGroupedSampler``: training order that puts rows of similar length in the same batch
  (deterministic per seed and epoch, resumable like ``EpochSampler``), each row carrying its
  global batch's bucket -- the same on every process, so multi-host batches agree.
* ``sorted_batches``: inference order, longest first, with each batch's bucket; callers put the
  results back in input order.
"""

from __future__ import annotations

import bisect

import numpy as np

from bertjax.data.pipeline import EpochSampler

MULTIPLE = 8  # bucket lengths are multiples of this (vector-friendly shapes)


def choose_buckets(lengths: np.ndarray, max_length: int, count: int = 4) -> tuple[int, ...]:
  """Bucket lengths at ``count - 1`` evenly spaced quantiles of ``lengths`` and at their
  maximum (each rounded up to a multiple of 8), and ``max_length``, which holds anything."""
  lengths = np.asarray(lengths)
  if count <= 1 or not len(lengths):
    return (max_length,)
  qs = list(np.quantile(lengths, np.arange(1, count) / count, method="higher")) + [lengths.max()]
  cuts = {min(max_length, max(MULTIPLE, int(-(-q // MULTIPLE) * MULTIPLE))) for q in qs}
  return tuple(sorted(cuts | {max_length}))


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket >= ``length`` (the largest if none holds it)."""
  i = bisect.bisect_left(buckets, length)
  return buckets[min(i, len(buckets) - 1)]


def sorted_batches(lengths: np.ndarray, batch_size: int, buckets: tuple[int, ...]):
  """-> [(bucket, row indices)], rows longest first, ``batch_size`` rows per batch (the last
  may be shorter). Stable: equal lengths keep input order."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  out = []
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    out.append((bucket_for(int(lengths[idx].max()), buckets), idx))
  return out


class LengthGroupedSampler(EpochSampler):
  """``EpochSampler`` whose per-epoch order groups similar lengths -> (epoch, example, bucket).

  Each epoch's permutation (materialised: fine-tuning sets are small) is cut into windows of
  ``window`` global batches; a window is sorted by length and cut into batches, and the batches'
  order is shuffled within the epoch (transformers' ``group_by_length`` does the same). Global
  batches stay aligned with the stream when the epoch size is not a multiple of the batch: the
  rows that complete the previous epoch's last batch are left as drawn. ``bucket`` is the
  padded length of the row's *global* batch, so every process pads its rows alike.

  ``lengths`` [n, columns] (a pair's anchor and positive texts): each column gets its own
  bucket, ``bucket`` is their tuple, and grouping sorts by a row's longest column."""

  def __init__(self, lengths: np.ndarray, seed: int, buckets: tuple[int, ...], *,
               window: int = 64, group: bool = True, local_batch: int = 1,
               process_index: int = 0, process_count: int = 1):
    super().__init__(len(lengths), seed, shuffle=True, local_batch=local_batch,
                     process_index=process_index, process_count=process_count)
    self.lengths, self.buckets = np.asarray(lengths), tuple(buckets)
    self._longest = self.lengths if self.lengths.ndim == 1 else self.lengths.max(1)
    self.global_batch = local_batch * process_count
    self.window, self.group = window, group
    self._order: tuple[int, np.ndarray] | None = None
    self._bucket_cache: dict[int, int] = {}

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if self._order is not None and self._order[0] == epoch:
      return self._order[1]
    n, b = self.num_examples, self.global_batch
    rng = np.random.default_rng([self.seed, epoch])
    perm = rng.permutation(n)  # fine-tuning sized: the windows are sorted in memory
    head = (-epoch * n) % b  # rows that finish the batch begun in the previous epoch
    body = perm[head:]
    windows = [body[i:i + b * self.window] for i in range(0, len(body), b * self.window)]
    body = np.concatenate([w[np.argsort(-self._longest[w], kind="stable")] for w in windows]
                          ) if windows else body
    full = len(body) // b
    batches = body[:full * b].reshape(full, b)[rng.permutation(full)]
    perm = np.concatenate([perm[:head], batches.reshape(-1), body[full * b:]])
    self._order = (epoch, perm)
    return perm

  def example_at(self, position: int) -> tuple[int, int]:
    if not self.group:  # plain shuffling: EpochSampler's order
      return super().example_at(position)
    epoch, j = divmod(position, self.num_examples)
    return epoch, int(self._epoch_order(epoch)[j])

  def _bucket(self, global_batch_index: int) -> int | tuple[int, ...]:
    if global_batch_index not in self._bucket_cache:
      start = global_batch_index * self.global_batch
      rows = [self.example_at(p)[1] for p in range(start, start + self.global_batch)]
      if len(self._bucket_cache) > 4096:
        self._bucket_cache.clear()
      longest = self.lengths[rows].max(0)
      self._bucket_cache[global_batch_index] = (
          bucket_for(int(longest), self.buckets) if longest.ndim == 0 else
          tuple(bucket_for(int(x), self.buckets) for x in longest))
    return self._bucket_cache[global_batch_index]

  def __getitem__(self, index: int) -> tuple[int, int, int | tuple[int, ...]]:
    position = self.global_position(index)
    epoch, example = self.example_at(position)
    return epoch, example, self._bucket(position // self.global_batch)
