"""Grain input pipeline: instances -> (epoch-shuffled, host-sharded) examples -> masked numpy
batches of this process's rows (``sharding.global_batch`` makes them global jax.Arrays).

Determinism: example order is a permutation per (seed, epoch); an example's mask comes from
``np.random.default_rng([seed, epoch, example])`` (dynamic) or ``[seed, example]`` (static).
The grain iterator state is just an index, saved in every checkpoint.
"""

from __future__ import annotations

import grain
import jax
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as index_shuffle
import numpy as np

from bertjax.config import DataConfig
from bertjax.data.masking import (MaskingSpec, SpanSpec, mask_instance, span_mask_instance,
                                  unigram_cdf)
from bertjax.data.instances import Instance
from bertjax.data.tokenizer import Tokenizer

_FOREVER = 2**40


def masking_spec(cfg: DataConfig, tokenizer: Tokenizer) -> MaskingSpec:
  return MaskingSpec(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                     mask_rate=cfg.mask_rate, mask_token_prob=cfg.mask_token_prob,
                     random_token_prob=cfg.random_token_prob,
                     max_predictions=cfg.max_predictions_per_seq,
                     whole_word=cfg.whole_word_masking,
                     ngram=cfg.ngram_max if cfg.masking == "ngram" else 1)


class EpochSampler:
  """Random-access ``local index -> (epoch, example)`` for one process, in O(1) memory.

  The global stream is a fresh permutation of the examples per epoch (identity for evaluation),
  computed index by index (grain's ``index_shuffle``, the bijection behind
  ``MapDataset.shuffle``), never materialised: a corpus of billions of instances costs no host
  memory. Global batch k is stream positions [k*B, (k+1)*B); process p reads the contiguous rows
  [p*B/P, (p+1)*B/P) of it, so the assembled global batch has exactly the rows -- in the same
  order -- that a single process would read."""

  def __init__(self, num_examples: int, seed: int, shuffle: bool = True, *, local_batch: int = 1,
               process_index: int = 0, process_count: int = 1):
    if shuffle and num_examples > 2**32:
      raise ValueError(f"{num_examples} examples: the index shuffle takes at most 2**32")
    self.num_examples, self.seed, self.shuffle = num_examples, seed, shuffle
    self.local_batch, self.process_index, self.process_count = local_batch, process_index, process_count

  def __len__(self) -> int:
    return _FOREVER

  def global_position(self, index: int) -> int:
    batch, row = divmod(int(index), self.local_batch)
    return (batch * self.process_count + self.process_index) * self.local_batch + row

  def epoch_seed(self, epoch: int) -> int:
    """A 32-bit seed per (seed, epoch), well mixed (SeedSequence), for the index shuffle."""
    return int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])

  def example_at(self, position: int) -> tuple[int, int]:
    """Stream position -> (epoch, example)."""
    epoch, j = divmod(position, self.num_examples)
    if not self.shuffle or self.num_examples == 1:
      return epoch, j
    return epoch, int(index_shuffle.index_shuffle(j, max_index=self.num_examples - 1,
                                                  seed=self.epoch_seed(epoch), rounds=4))

  def __getitem__(self, index: int) -> tuple[int, int]:
    return self.example_at(self.global_position(index))


class MakeExample:
  """(epoch, example) -> padded, masked numpy features. Picklable for grain worker processes."""

  def __init__(self, store, spec: MaskingSpec, max_seq_length: int, pad_id: int, seed: int,
               dynamic: bool, span: SpanSpec | None = None, unigram: np.ndarray | None = None):
    self.store, self.spec, self.length = store, spec, max_seq_length
    self.pad_id, self.seed, self.dynamic, self.span = pad_id, seed, dynamic, span
    # SpanBERT draws random replacements from the training corpus's unigram distribution
    self.unigram = unigram_cdf(unigram) if span is not None and unigram is not None else None

  def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray]:
    epoch, example = item
    x = self.store[example]
    key = [self.seed, epoch, example] if self.dynamic else [self.seed, example]
    rng = np.random.default_rng(key)
    extra = {}
    if self.span is not None:
      ids, positions, labels, weights, extra = span_mask_instance(x, self.spec, self.span, rng,
                                                                  self.unigram)
    else:
      ids, positions, labels, weights = mask_instance(x, self.spec, rng)
    n, t = len(ids), self.length
    out = {
        "input_ids": np.full(t, self.pad_id, np.int32),
        "token_type_ids": np.zeros(t, np.int32),
        "padding_mask": np.zeros(t, bool),
        "masked_positions": positions,
        "masked_ids": labels,
        "masked_weights": weights,
        "seq_relationship_label": np.int32(x.label),  # NSP or SOP
    }
    out["input_ids"][:n] = ids
    out["token_type_ids"][:n] = x.type_ids
    out["padding_mask"][:n] = True
    if x.segment_ids is not None:
      out["segment_ids"] = np.zeros(t, np.int32)
      out["segment_ids"][:n] = x.segment_ids
    out.update(extra)
    return out


def make_dataset(store, spec: MaskingSpec, cfg: DataConfig, *, local_batch_size: int, pad_id: int,
                 shuffle: bool = True, seed_offset: int = 0, sbo_max_targets: int = 15,
                 unigram: np.ndarray | None = None) -> grain.IterDataset:
  """This process's rows of every global batch (see ``EpochSampler``). ``unigram``: the
  training tokens' counts (span masking draws its random tokens from them)."""
  sampler = EpochSampler(len(store), cfg.seed + seed_offset, shuffle=shuffle,
                         local_batch=local_batch_size, process_index=jax.process_index(),
                         process_count=jax.process_count())
  ds = grain.MapDataset.source(sampler)
  span = (SpanSpec(cfg.span_geometric_p, cfg.span_max_words, sbo_max_targets)
          if cfg.masking == "span" else None)
  ds = ds.map(MakeExample(store, spec, cfg.max_seq_length, pad_id, cfg.seed + seed_offset,
                          cfg.dynamic_masking or not shuffle, span, unigram))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if cfg.num_workers > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads absl flags in workers (grain#1355)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return it



def batch_spec(cfg: DataConfig, *, batch_size: int, vocab_size: int, mask_id: int = 4,
               sbo_max_targets: int = 15) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{input name: (global shape, dtype)} of the batches ``make_dataset`` yields for ``cfg``,
  without any data: one synthetic instance goes through the same ``MakeExample``."""
  n = cfg.max_seq_length
  ids = (np.arange(n) % max(vocab_size - 8, 1) + 8).astype(np.int32)
  packed = cfg.instances == "packed"
  x = Instance(ids=ids, word_start=np.ones(n, bool), type_ids=np.zeros(n, np.int8),
               special=np.zeros(n, bool), label=0,
               segment_ids=np.ones(n, np.int16) if packed else None)
  spec = MaskingSpec(mask_id=mask_id, vocab_size=vocab_size, mask_rate=cfg.mask_rate,
                     mask_token_prob=cfg.mask_token_prob, random_token_prob=cfg.random_token_prob,
                     max_predictions=cfg.max_predictions_per_seq,
                     whole_word=cfg.whole_word_masking,
                     ngram=cfg.ngram_max if cfg.masking == "ngram" else 1)
  span = (SpanSpec(cfg.span_geometric_p, cfg.span_max_words, sbo_max_targets)
          if cfg.masking == "span" else None)
  example = MakeExample([x], spec, n, 0, 0, True, span, np.ones(vocab_size))((0, 0))
  return {k: ((batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in example.items()}
