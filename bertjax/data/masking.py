"""Host-side MLM masking (numpy), deterministic per (seed, epoch, example).

BERT's create_masked_lm_predictions: ``num_to_predict = min(max_predictions, max(1,
round(len * rate)))`` over the real tokens; template tokens are never selected; with whole-word
masking whole words are taken in random order while they fit; then each selected token
independently becomes [MASK] (80%), a random vocabulary id (10%) or stays (10%).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bertjax.data.instances import Instance


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  mask_id: int
  vocab_size: int
  mask_rate: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  max_predictions: int = 20
  whole_word: bool = False
  ngram: int = 1  # ALBERT: whole-word n-grams, n in 1..ngram with p(n) ~ 1/n


def select_positions(x: Instance, spec: MaskingSpec, rng: np.random.Generator) -> np.ndarray:
  """Sorted positions chosen for prediction."""
  n = len(x.ids)
  num_to_predict = min(spec.max_predictions, max(1, int(round(n * spec.mask_rate))))
  candidates = np.flatnonzero(~x.special)
  if not len(candidates):
    return candidates
  if spec.whole_word or spec.ngram > 1:
    # a group starts at every word start (and wherever the previous token is a template token)
    starts = x.word_start[candidates] | np.r_[True, np.diff(candidates) != 1]
    groups = np.split(candidates, np.flatnonzero(starts)[1:])
  else:
    groups = None
  if spec.ngram > 1:
    return _select_ngrams(groups, num_to_predict, spec.ngram, rng)
  if groups is None:
    order = rng.permutation(len(candidates))
    return np.sort(candidates[order[:num_to_predict]])
  chosen: list[np.ndarray] = []
  count = 0
  for g in rng.permutation(len(groups)):
    if count >= num_to_predict:
      break
    if count + len(groups[g]) > num_to_predict:
      continue
    chosen.append(groups[g])
    count += len(groups[g])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def ngram_probabilities(max_n: int) -> np.ndarray:
  p = 1.0 / np.arange(1, max_n + 1)
  return p / p.sum()


def _select_ngrams(words: list[np.ndarray], budget: int, max_n: int, rng) -> np.ndarray:
  """ALBERT create_pretraining_data.py: from random word starts take n consecutive words,
  n ~ p(n) = (1/n) / sum(1/k); shrink n while the n-gram would overflow the budget; skip
  n-grams overlapping what is already chosen."""
  probs = ngram_probabilities(max_n)
  covered: set[int] = set()
  chosen: list[np.ndarray] = []
  count = 0
  for w in rng.permutation(len(words)):
    if count >= budget:
      break
    n = int(rng.choice(max_n, p=probs)) + 1
    while n >= 1:
      gram = np.concatenate(words[w:w + n])
      if count + len(gram) <= budget:
        break
      n -= 1
    if n < 1 or any(int(i) in covered for i in gram):
      continue
    covered.update(int(i) for i in gram)
    chosen.append(gram)
    count += len(gram)
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def mask_instance(x: Instance, spec: MaskingSpec, rng: np.random.Generator):
  """-> (input ids with replacements, positions [P], original ids [P], weights [P])."""
  positions = select_positions(x, spec, rng)
  ids = x.ids.copy()
  labels = ids[positions]
  r = rng.random(len(positions))
  to_mask = r < spec.mask_token_prob
  to_random = (r >= spec.mask_token_prob) & (r < spec.mask_token_prob + spec.random_token_prob)
  ids[positions[to_mask]] = spec.mask_id
  ids[positions[to_random]] = rng.integers(0, spec.vocab_size, int(to_random.sum()))
  p = spec.max_predictions
  out_pos = np.zeros(p, np.int32)
  out_ids = np.zeros(p, np.int32)
  weights = np.zeros(p, np.float32)
  k = len(positions)
  out_pos[:k], out_ids[:k], weights[:k] = positions, labels, 1.0
  return ids, out_pos, out_ids, weights


@dataclasses.dataclass(frozen=True)
class SpanSpec:
  """SpanBERT (facebookresearch/SpanBERT pretraining/fairseq/data/masking.py, the official run):
  span lengths in whole words ~ Geometric(p) clipped to [1, max_words], spans until
  ceil(len x rate) tokens are chosen, one 80/10/10 decision per span, random replacements
  drawn from the corpus unigram distribution; SBO predicts up to max_targets tokens a span."""

  geometric_p: float = 0.2
  max_words: int = 10
  max_targets: int = 15


def span_lengths_distribution(spec: SpanSpec) -> np.ndarray:
  p = spec.geometric_p * (1 - spec.geometric_p) ** np.arange(spec.max_words)
  return p / p.sum()


def unigram_cdf(counts: np.ndarray) -> np.ndarray:
  """Token counts -> the cumulative distribution ``sample_tokens`` draws from."""
  cdf = np.cumsum(np.asarray(counts, np.float64))
  return cdf / cdf[-1]


def sample_tokens(cdf: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """``size`` token ids drawn from the distribution of ``cdf`` (inverse transform)."""
  return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def span_mask_instance(x: Instance, spec: MaskingSpec, span: SpanSpec, rng: np.random.Generator,
                       unigram: np.ndarray | None = None):
  """-> (ids, positions, labels, weights, sbo): ``sbo`` holds, per predicted slot, the left and
  right boundary positions, the position within its span and a weight (0 for spans touching
  the sequence edges or beyond max_targets). ``unigram``: the training corpus's token cdf
  (``unigram_cdf``) that random replacements are drawn from; None = uniform over the vocab."""
  n = len(x.ids)
  inner = np.flatnonzero(~x.special)
  budget = min(spec.max_predictions, math.ceil(len(inner) * spec.mask_rate))
  word_start = x.word_start | np.r_[True, x.special[:-1]]
  lengths = span_lengths_distribution(span)
  chosen = np.zeros(n, bool)
  spans: list[tuple[int, int]] = []
  attempts = 0
  while chosen.sum() < budget and attempts < 10 * budget:
    attempts += 1
    words = int(rng.choice(len(lengths), p=lengths)) + 1
    anchor = int(inner[rng.integers(len(inner))])
    if chosen[anchor]:
      continue
    start = anchor
    while start > 0 and not word_start[start] and not x.special[start - 1]:
      start -= 1  # back to the start of the anchor's word
    end, taken = start, 0
    while end < n and not x.special[end] and chosen.sum() + (end - start) < budget:
      if word_start[end] and end > start:
        taken += 1
        if taken >= words:
          break
      end += 1
    if end == start:
      continue
    spans.append((start, end))
    chosen[start:end] = True
  ids = x.ids.copy()
  for start, end in spans:  # one 80/10/10 decision per span
    r = rng.random()
    if r < spec.mask_token_prob:
      ids[start:end] = spec.mask_id
    elif r < spec.mask_token_prob + spec.random_token_prob:
      size = end - start
      ids[start:end] = (sample_tokens(unigram, size, rng) if unigram is not None
                        else rng.integers(0, spec.vocab_size, size))
  positions = np.flatnonzero(chosen)[:spec.max_predictions]
  p = spec.max_predictions
  out_pos, out_ids = np.zeros(p, np.int32), np.zeros(p, np.int32)
  weights = np.zeros(p, np.float32)
  k = len(positions)
  out_pos[:k], out_ids[:k], weights[:k] = positions, x.ids[positions], 1.0
  # SBO: merged spans = maximal runs of chosen tokens
  left, right = np.zeros(p, np.int32), np.zeros(p, np.int32)
  rel, sbo_w = np.zeros(p, np.int32), np.zeros(p, np.float32)
  for slot, pos in enumerate(positions):
    s = pos
    while s > 0 and chosen[s - 1]:
      s -= 1
    e = pos
    while e + 1 < n and chosen[e + 1]:
      e += 1
    left[slot], right[slot], rel[slot] = s - 1, e + 1, min(pos - s, span.max_targets - 1)
    touches_edge = s - 1 < 0 or x.special[s - 1] or e + 1 >= n or x.special[e + 1]
    sbo_w[slot] = 0.0 if touches_edge or pos - s >= span.max_targets else 1.0
  left, right = np.clip(left, 0, n - 1), np.clip(right, 0, n - 1)
  return ids, out_pos, out_ids, weights, {"sbo_left": left, "sbo_right": right,
                                          "sbo_relative": rel, "sbo_weights": sbo_w}
