"""The shipped sentence-embedding pairs (``data.dataset=book-pairs``), built from the shipped
public-domain corpus by the Inverse Cloze Task (Lee et al., 2019, "Latent Retrieval for Weakly
Supervised Open Domain Question Answering"): a sentence taken out of a paragraph is the
*anchor*, the rest of that paragraph its *positive*. The sentence is always removed, so an
anchor never appears word for word in its positive.

Paragraphs of 3 to 6 sentences and 25 to 120 words qualify; each is assigned to a split by a
hash of its text (10% test, 10% validation), and its anchor sentence is picked by the same hash,
so the files are a pure function of the corpus. Regenerate them with
``python -m bertjax.data.book_pairs`` (tests/test_embedding_task.py checks that the shipped
files are what this builds).
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

from bertjax.data.sources import corpus_files, split_sentences

OUT = Path(__file__).resolve().parent / "tasks" / "book-pairs"
SIZES = {"train": 3000, "validation": 300, "test": 300}


def _digest(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def book_pairs() -> dict[str, list[dict]]:
  """{split: [{"anchor", "positive"}]} in corpus order, each split cut to ``SIZES``."""
  out = {split: [] for split in SIZES}
  seen = set()
  for path in corpus_files():
    with lzma.open(path, "rt", encoding="utf-8") as f:
      paragraphs = [p.strip() for p in f.read().split("\n") if p.strip()]
    for paragraph in paragraphs:
      sentences = split_sentences(paragraph)
      words = len(paragraph.split())
      if not 3 <= len(sentences) <= 6 or not 25 <= words <= 120 or paragraph in seen:
        continue
      seen.add(paragraph)
      h = _digest(paragraph)
      split = "test" if h % 10 == 0 else "validation" if h % 10 == 1 else "train"
      pick = (h // 10) % len(sentences)
      anchor = sentences[pick]
      if len(anchor.split()) < 5:
        continue
      positive = " ".join(sentences[:pick] + sentences[pick + 1:])
      out[split].append({"anchor": anchor, "positive": positive})
  # an even spread over the books: every k-th pair of each split
  for split, n in SIZES.items():
    rows = out[split]
    step = max(1, len(rows) // n)
    out[split] = rows[::step][:n]
  return out


def main() -> None:
  OUT.mkdir(parents=True, exist_ok=True)
  for split, rows in book_pairs().items():
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (OUT / f"{split}.jsonl").write_text(text, encoding="utf-8")
    print(f"{OUT / split}.jsonl: {len(rows)} pairs")


if __name__ == "__main__":
  main()
