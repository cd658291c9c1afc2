"""Host-side MLM masking (numpy), deterministic per (seed, epoch, example).

BERT's create_masked_lm_predictions: ``num_to_predict = min(max_predictions, max(1,
round(len * rate)))`` over the real tokens; template tokens are never selected; with whole-word
masking whole words are taken in random order while they fit; then each selected token
independently becomes [MASK] (80%), a random vocabulary id (10%) or stays (10%).
"""

from __future__ import annotations

import dataclasses

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


def select_positions(x: Instance, spec: MaskingSpec, rng: np.random.Generator) -> np.ndarray:
  """Sorted positions chosen for prediction."""
  n = len(x.ids)
  num_to_predict = min(spec.max_predictions, max(1, int(round(n * spec.mask_rate))))
  candidates = np.flatnonzero(~x.special)
  if not len(candidates):
    return candidates
  if spec.whole_word:
    # a group starts at every word start (and wherever the previous token is a template token)
    starts = x.word_start[candidates] | np.r_[True, np.diff(candidates) != 1]
    groups = np.split(candidates, np.flatnonzero(starts)[1:])
  else:
    groups = None
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
