"""One tokenizer interface over HF ``tokenizers`` (WordPiece, byte-level BPE, tokenizer.json)
and ``sentencepiece`` (.model), with BERT / RoBERTa pair templates, longest-first truncation,
character offsets and word ids (for whole-word masking, NER and QA).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from bertjax.errors import UserError

SPM_NAMES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "spm.model")


class TokenizerError(UserError):
  """A tokenizer folder or file that cannot be read."""


@dataclasses.dataclass
class Encoding:
  ids: list[int]
  type_ids: list[int]  # token types: 0 for the first segment, 1 for the second (BERT)
  offsets: list[tuple[int, int]]  # character spans into the segment's own text; (0, 0) specials
  word_ids: list[int | None]  # word index within its segment; None for special tokens
  sequence_ids: list[int | None]  # 0 / 1 for the segment a token came from; None for specials
  special_mask: list[int]  # 1 for template tokens

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  cls: str
  sep: str
  pad: str
  mask: str
  unk: str


BERT_SPECIALS = SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
ROBERTA_SPECIALS = SpecialTokens("<s>", "</s>", "<pad>", "<mask>", "<unk>")
ALBERT_SPECIALS = SpecialTokens("[CLS]", "[SEP]", "<pad>", "[MASK]", "<unk>")


class _HFBackend:

  def __init__(self, tok):
    tok.no_truncation()
    tok.no_padding()
    self.tok = tok

  def tokenize(self, text: str):
    enc = self.tok.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets], list(enc.word_ids)

  def tokenize_batch(self, texts: Sequence[str]):
    return [(e.ids, e.offsets, e.word_ids)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def words_batch(self, texts: Sequence[str]):
    return [(e.ids, e.word_ids)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def token_to_id(self, token: str) -> int | None:
    return self.tok.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.tok.id_to_token(i)

  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode(list(ids), skip_special_tokens=False)


class _SentencePieceBackend:

  def __init__(self, path: Path, lowercase: bool):
    import sentencepiece as spm

    self.sp = spm.SentencePieceProcessor(model_file=str(path))
    self.lowercase = lowercase

  def tokenize(self, text: str):
    if self.lowercase:
      text = text.lower()
    proto = self.sp.encode(text, return_type="proto")
    # sentencepiece reports byte offsets into the input; convert to character offsets.
    byte_to_char = []
    for ci, ch in enumerate(text):
      byte_to_char.extend([ci] * len(ch.encode("utf-8")))
    byte_to_char.append(len(text))
    ids, offsets, word_ids, word = [], [], [], -1
    for piece in proto.pieces:
      ids.append(piece.id)
      offsets.append((byte_to_char[min(piece.begin, len(byte_to_char) - 1)],
                      byte_to_char[min(piece.end, len(byte_to_char) - 1)]))
      if piece.piece.startswith("\u2581") or word < 0:
        word += 1
      word_ids.append(word)
    return ids, offsets, word_ids

  def tokenize_batch(self, texts: Sequence[str]):
    return [self.tokenize(t) for t in texts]

  def words_batch(self, texts: Sequence[str]):
    return [(ids, words) for ids, _, words in self.tokenize_batch(texts)]

  def token_to_id(self, token: str) -> int | None:
    i = self.sp.piece_to_id(token)
    return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

  def id_to_token(self, i: int) -> str | None:
    return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode(list(ids))


class Tokenizer:
  """``encode(text, pair)`` -> Encoding with the family's template; ``from_dir`` finds the files."""

  def __init__(self, backend, specials: SpecialTokens, source_files: Sequence[Path] = ()):
    self.backend = backend
    self.specials = specials
    self.source_files = [Path(p) for p in source_files]
    self.roberta_template = specials.cls == "<s>"
    ids = {}
    for name in ("cls", "sep", "pad", "mask", "unk"):
      token = getattr(specials, name)
      i = backend.token_to_id(token)
      if i is None:
        raise TokenizerError(f"special token {token!r} ({name}) is not in the vocabulary")
      ids[name] = i
    self.cls_id, self.sep_id, self.pad_id = ids["cls"], ids["sep"], ids["pad"]
    self.mask_id, self.unk_id = ids["mask"], ids["unk"]

  # -- construction --------------------------------------------------------------------------

  @classmethod
  def from_dir(cls, path: str | Path) -> "Tokenizer":
    from bertjax import storage

    where = storage.as_path(path)
    if not where.is_dir():
      raise TokenizerError(f"tokenizer folder {where} does not exist")
    path = storage.local_copy(where)  # the tokenizer libraries open local files only
    config = _read_json(path / "tokenizer_config.json")
    lowercase = bool(config.get("do_lower_case", True))
    if (path / "tokenizer.json").exists():
      from tokenizers import Tokenizer as HFTokenizer

      backend = _HFBackend(HFTokenizer.from_file(str(path / "tokenizer.json")))
      files = [path / "tokenizer.json"]
    elif (path / "vocab.txt").exists():
      backend = _HFBackend(_wordpiece(path / "vocab.txt", lowercase))
      files = [path / "vocab.txt"]
    elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
      backend = _HFBackend(_byte_bpe(path / "vocab.json", path / "merges.txt"))
      files = [path / "vocab.json", path / "merges.txt"]
    else:
      spm = [path / n for n in SPM_NAMES if (path / n).exists()] or sorted(path.glob("*.model"))
      if not spm:
        raise TokenizerError(f"{path}: no tokenizer.json, vocab.txt, vocab.json+merges.txt or "
                             "SentencePiece .model file")
      backend = _SentencePieceBackend(spm[0], lowercase=bool(config.get("do_lower_case", False)))
      files = [spm[0]]
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
      if (path / extra).exists():
        files.append(path / extra)
    return cls(backend, _specials(config, _read_json(path / "special_tokens_map.json"), backend),
               files)

  def save(self, dst: str | Path) -> Path:
    from bertjax import storage

    dst = storage.as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in self.source_files:
      storage.copy_file(f, dst / f.name)
    return dst

  # -- vocabulary ----------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.backend.vocab_size()

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.backend.id_to_token(int(i))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    special = {self.cls_id, self.sep_id, self.pad_id, self.mask_id} if skip_special_tokens else set()
    return self.backend.decode([i for i in ids if i not in special])

  @property
  def num_special_tokens(self) -> tuple[int, int]:
    """Template tokens added for (single, pair) inputs."""
    return (2, 4) if self.roberta_template else (2, 3)

  # -- encoding ------------------------------------------------------------------------------

  def tokenize(self, text: str):
    """Ids, offsets, word ids of ``text`` without template tokens."""
    return self.backend.tokenize(text)

  def tokenize_batch(self, texts: Sequence[str]):
    return self.backend.tokenize_batch(texts)

  def words_batch(self, texts: Sequence[str]) -> list[tuple[list[int], list[int | None]]]:
    """(ids, word ids) per text, without offsets (pretraining data: the fast path)."""
    return self.backend.words_batch(texts)

  def encode(self, text: str, pair: str | None = None, *, max_length: int | None = None) -> Encoding:
    a = self.tokenize(text)
    b = self.tokenize(pair) if pair is not None else None
    return self.build(a, b, max_length=max_length)

  def build(self, a, b=None, *, max_length: int | None = None) -> Encoding:
    """Apply the template to pre-tokenized (ids, offsets, word_ids) segments, truncating the
    longer segment first (``longest_first``) until the whole fits in ``max_length``."""
    a = [list(x) for x in a]
    b = [list(x) for x in b] if b is not None else None
    if max_length is not None:
      budget = max_length - self.num_special_tokens[1 if b is not None else 0]
      if budget < 0:
        raise TokenizerError(f"max_length={max_length} is too short for the template")
      n_a, n_b = _truncated_lengths(len(a[0]), len(b[0]) if b else 0, budget, b is not None)
      a = [field[:n_a] for field in a]
      b = [field[:n_b] for field in b] if b is not None else None
    cls_, sep = self.cls_id, self.sep_id
    ids, types, offsets, words, seqs, special = [], [], [], [], [], []

    def add_special(token_id, type_id):
      ids.append(token_id), types.append(type_id), offsets.append((0, 0))
      words.append(None), seqs.append(None), special.append(1)

    def add_segment(seg, type_id, seq_id):
      ids.extend(seg[0]), offsets.extend(tuple(o) for o in seg[1]), words.extend(seg[2])
      types.extend([type_id] * len(seg[0])), seqs.extend([seq_id] * len(seg[0]))
      special.extend([0] * len(seg[0]))

    second_type = 0 if self.roberta_template else 1
    add_special(cls_, 0)
    add_segment(a, 0, 0)
    add_special(sep, 0)
    if b is not None:
      if self.roberta_template:
        add_special(sep, 0)  # <s> A </s></s> B </s>
      add_segment(b, second_type, 1)
      add_special(sep, second_type)
    return Encoding(ids, types, offsets, words, seqs, special)


def _truncated_lengths(n_a: int, n_b: int, budget: int, pair: bool) -> tuple[int, int]:
  """Longest-first truncation exactly as HF ``tokenizers`` does it: the longer side shrinks
  first; when both must shrink they split the budget, the originally longer side (or, on a
  tie, the second) keeping the odd token. (Original BERT differs only on that tie.)"""
  if not pair:
    return min(n_a, budget), 0
  if n_a + n_b <= budget:
    return n_a, n_b
  short, long_ = sorted((n_a, n_b))
  long_ = short if short > budget else max(short, budget - short)
  if short + long_ > budget:
    short, long_ = budget // 2, budget // 2 + budget % 2
  return (long_, short) if n_a > n_b else (short, long_)


def _read_json(path: Path) -> dict:
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise TokenizerError(f"{path}: invalid JSON ({e})") from None


def _token_text(value) -> str | None:
  if isinstance(value, dict):
    return value.get("content")
  return value


def _specials(config: dict, special_map: dict, backend) -> SpecialTokens:
  """Special tokens from tokenizer_config.json / special_tokens_map.json, else from the vocab."""
  for default in (BERT_SPECIALS, ROBERTA_SPECIALS, ALBERT_SPECIALS):
    if all(backend.token_to_id(getattr(default, f)) is not None
           for f in ("cls", "sep", "pad", "mask", "unk")):
      break
  else:
    default = BERT_SPECIALS
  values = {}
  for name in ("cls", "sep", "pad", "mask", "unk"):
    key = f"{name}_token"
    values[name] = (_token_text(config.get(key)) or _token_text(special_map.get(key))
                    or getattr(default, name))
  return SpecialTokens(**values)


def _wordpiece(vocab: Path, lowercase: bool):
  from tokenizers import Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers
  from tokenizers.models import WordPiece

  tok = HFTokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                              strip_accents=None, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  return tok


def _byte_bpe(vocab: Path, merges: Path):
  from tokenizers import Tokenizer as HFTokenizer, decoders, pre_tokenizers, processors
  from tokenizers.models import BPE

  tok = HFTokenizer(BPE.from_file(str(vocab), str(merges)))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  return tok
