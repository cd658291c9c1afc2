"""Samplers and length buckets: the O(1)-memory epoch shuffle, the bucket choice, the
length-grouped training order (every example once per epoch, deterministic, the same global
batches on 1 or 2 processes), and bucketed inference equal to padding everything to the full
length."""

import jax
import numpy as np
import pytest
from flax import nnx

from bertjax import sharding
from bertjax.config import model_config
from bertjax.data.buckets import LengthGroupedSampler, bucket_for, choose_buckets, sorted_batches
from bertjax.data.pipeline import EpochSampler
from bertjax.models import Model
from bertjax.tasks.serve import Predictor


def test_epoch_sampler_is_an_index_permutation_in_constant_memory():
  s = EpochSampler(1000, seed=7, local_batch=10)
  first, second = ([s[i][1] for i in range(e * 1000, (e + 1) * 1000)] for e in range(2))
  assert sorted(first) == sorted(second) == list(range(1000))
  assert first != second and first != list(range(1000))
  assert [s[i] for i in range(50)] == [EpochSampler(1000, seed=7, local_batch=10)[i]
                                       for i in range(50)]
  assert [s[i][1] for i in range(50)] != [EpochSampler(1000, seed=8)[i][1] for i in range(50)]
  # three billion instances: a materialised permutation would need 24 GB; this reads at once
  huge = EpochSampler(3_000_000_000, seed=1, local_batch=256)
  rows = [huge[i][1] for i in range(0, 10**9, 10**7)]
  assert len(set(rows)) == len(rows) and max(rows) < 3_000_000_000


def test_choose_buckets_follow_the_length_quantiles():
  lengths = np.concatenate([np.full(50, 10), np.full(30, 30), np.full(20, 60)])
  # quartiles 10, 30, 30 and the longest, 60 -> 16, 32, 64; and the full length
  assert choose_buckets(lengths, 128, 4) == (16, 32, 64, 128)
  assert choose_buckets(lengths, 128, 1) == (128,)
  assert choose_buckets(np.full(5, 200), 128, 3) == (128,)
  assert bucket_for(17, (16, 32, 128)) == 32 and bucket_for(16, (16, 32, 128)) == 16
  assert bucket_for(500, (16, 32, 128)) == 128


def _stream(sampler, start, count):
  return [sampler[i] for i in range(start, start + count)]


def test_pair_columns_get_their_own_buckets_through_the_iterator():
  """Anchors and positives (lengths [n, 2]): each column of a global batch is padded to the
  bucket of its own longest row, so short anchors are not padded to long positives."""
  from bertjax.tasks.data import train_iterator

  rng = np.random.default_rng(0)
  n, b, buckets = 64, 8, (16, 32, 64, 128)
  lengths = np.stack([rng.integers(3, 30, n), rng.integers(40, 128, n)], 1)
  s = LengthGroupedSampler(lengths, seed=1, buckets=buckets, group=False, local_batch=b)
  items = _stream(s, 0, n)
  for k in range(n // b):
    rows = [ex for _, ex, _ in items[k * b:(k + 1) * b]]
    assert {bk for _, _, bk in items[k * b:(k + 1) * b]} == {
        tuple(bucket_for(int(lengths[rows, c].max()), buckets) for c in (0, 1))}
  arrays = {"a_ids": np.arange(n)[:, None] * np.ones((1, 128), np.int32),
            "b_ids": np.zeros((n, 128), np.int32)}
  first = next(train_iterator(arrays, b, 1, buckets=buckets, per_token={"a_ids": 0, "b_ids": 1},
                              group=False, lengths=lengths))
  assert (first["a_ids"].shape[1], first["b_ids"].shape[1]) == items[0][2]
  assert first["a_ids"].shape[1] < first["b_ids"].shape[1]
  assert first["a_ids"][:, 0].tolist() == [ex for _, ex, _ in items[:b]]


@pytest.mark.parametrize("n", [96, 101])
def test_grouped_order_visits_every_example_once_per_epoch(n):
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 120, n)
  b = 8
  s = LengthGroupedSampler(lengths, seed=3, buckets=(16, 32, 64, 128), window=4, local_batch=b)
  items = _stream(s, 0, 3 * n)
  for epoch in range(3):
    seen = [ex for e, ex, _ in items[epoch * n:(epoch + 1) * n]]
    assert [e for e, _, _ in items[epoch * n:(epoch + 1) * n]] == [epoch] * n
    assert sorted(seen) == list(range(n))
  # each global batch carries one bucket, the smallest holding its longest row
  for k in range(len(items) // b):
    rows = items[k * b:(k + 1) * b]
    buckets = {bk for _, _, bk in rows}
    assert len(buckets) == 1
    assert buckets.pop() == bucket_for(int(max(lengths[ex] for _, ex, _ in rows)), s.buckets)
  # deterministic per seed; a fresh sampler (a resumed run) reads the same rows
  again = LengthGroupedSampler(lengths, seed=3, buckets=(16, 32, 64, 128), window=4, local_batch=b)
  assert _stream(again, 2 * n - 5, 20) == items[2 * n - 5:2 * n + 15]
  other = LengthGroupedSampler(lengths, seed=4, buckets=(16, 32, 64, 128), window=4, local_batch=b)
  assert _stream(other, 0, n) != items[:n]


def test_grouping_cuts_padding_against_plain_shuffling():
  lengths = np.random.default_rng(1).integers(4, 128, 4000)
  b, buckets = 32, choose_buckets(lengths, 128, 4)
  grouped = LengthGroupedSampler(lengths, 0, buckets, local_batch=b)
  plain = LengthGroupedSampler(lengths, 0, buckets, local_batch=b, group=False)
  # plain: the same permutation as EpochSampler
  assert [ex for _, ex, _ in _stream(plain, 0, 64)] == [ex for _, ex in _stream(
      EpochSampler(4000, 0, local_batch=b), 0, 64)]

  def padded(sampler):
    return sum(bk for _, _, bk in _stream(sampler, 0, 4000 - 4000 % b))

  real = lengths.sum()
  assert padded(grouped) < 1.25 * real  # grouped rows fill their buckets
  assert padded(plain) > 1.6 * real  # a random batch almost always holds a long row


def test_processes_read_their_part_of_the_same_global_batches():
  lengths = np.random.default_rng(2).integers(3, 60, 77)
  one = LengthGroupedSampler(lengths, 5, (16, 32, 64), window=3, local_batch=8)
  two = [LengthGroupedSampler(lengths, 5, (16, 32, 64), window=3, local_batch=4,
                              process_index=p, process_count=2) for p in range(2)]
  whole = _stream(one, 0, 200)
  for k in range(25):
    parts = [two[p][k * 4 + i] for p in range(2) for i in range(4)]
    assert parts == whole[k * 8:(k + 1) * 8]


def test_sorted_batches_cover_rows_longest_first():
  lengths = np.array([5, 40, 12, 40, 3, 20, 33])
  batches = sorted_batches(lengths, 3, (16, 32, 48))
  assert [bk for bk, _ in batches] == [48, 32, 16]
  assert [list(i) for _, i in batches] == [[1, 3, 6], [5, 2, 0], [4]]


@pytest.mark.parametrize("per_token", [False, True])
def test_bucketed_predictor_equals_full_padding(per_token):
  cfg = model_config({"family": "bert", "vocab_size": 50, "hidden_size": 16, "num_layers": 2,
                      "num_heads": 2, "intermediate_size": 32, "max_position_embeddings": 48,
                      "heads": ["token_classifier" if per_token else "classifier"],
                      "num_labels": 3})
  graphdef, params = nnx.split(Model(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  n, full = 21, 48
  lengths = rng.integers(2, full + 1, n)
  mask = np.arange(full)[None] < lengths[:, None]
  arrays = {"input_ids": np.where(mask, rng.integers(1, 50, (n, full)), 0).astype(np.int32),
            "token_type_ids": np.zeros((n, full), np.int32), "padding_mask": mask}
  with sharding.use_mesh(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])):
    plain = Predictor(graphdef, 8, arrays, per_token=per_token)(params, arrays)
    bucketed = Predictor(graphdef, 8, arrays, buckets=(8, 16, 32), per_token=per_token)(
        params, arrays)
  if per_token:
    np.testing.assert_allclose(bucketed[mask], plain[mask], atol=1e-5, rtol=0)
    assert (bucketed[~mask] == Predictor.PAD_LOGIT).all()
  else:
    np.testing.assert_allclose(bucketed, plain, atol=1e-5, rtol=0)
