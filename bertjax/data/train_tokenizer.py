"""Train a WordPiece (BERT), byte-level BPE (RoBERTa) or SentencePiece (ALBERT) vocabulary
offline from text files; writes files that ``Tokenizer.from_dir`` and transformers both read."""

from __future__ import annotations

import codecs
import json
import os
import shutil
from pathlib import Path
from typing import Literal, Sequence

from bertjax.data.tokenizer import ALBERT_SPECIALS, BERT_SPECIALS, ROBERTA_SPECIALS, TokenizerError

Kind = Literal["wordpiece", "bpe", "sentencepiece"]


MIN_VOCAB = 16  # the specials and some of the alphabet


def train_tokenizer(files: Sequence[str | Path], out_dir: str | Path, *, kind: Kind = "wordpiece",
                    vocab_size: int = 30522, lowercase: bool = True, min_frequency: int = 2) -> Path:
  """Train on ``files`` (UTF-8 text) and write the vocabulary files into ``out_dir``. Files are
  checked first and training writes into a temporary sibling: a failure leaves no folder."""
  files = [str(f) for f in files]
  if not files:
    raise TokenizerError("no training files given")
  with_text = [_check_text_file(Path(f)) for f in files]
  if not any(with_text):
    raise TokenizerError(f"training file {files[0]} holds no text" if len(files) == 1 else
                         f"the training files ({', '.join(files)}) hold no text")
  if vocab_size < MIN_VOCAB:
    raise TokenizerError(f"--vocab-size {vocab_size} is too small (at least {MIN_VOCAB})")
  if kind not in ("wordpiece", "bpe", "sentencepiece"):
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; use wordpiece, bpe or sentencepiece")
  out = Path(out_dir)
  if out.exists() and not out.is_dir():
    raise TokenizerError(f"--out {out} is a file, not a folder")
  tmp = out.parent / f".{out.name}.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    _train(files, tmp, kind, vocab_size, lowercase, min_frequency)
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
      os.replace(f, out / f.name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def _check_text_file(path: Path) -> bool:
  """A training file must be UTF-8 text; a bad byte names file:line. -> whether it holds any
  text (not only whitespace)."""
  if not path.is_file():
    raise TokenizerError(f"training file {path} does not exist")
  decoder = codecs.getincrementaldecoder("utf-8")()
  line, has_text = 1, False
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      try:
        text = decoder.decode(chunk)
      except UnicodeDecodeError as e:
        line += chunk[:e.start].count(b"\n")
        raise TokenizerError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None
      if "\x00" in text:
        line += text[:text.index("\x00")].count("\n")
        raise TokenizerError(f"{path}:{line}: a NUL byte -- this is not a text file")
      line += text.count("\n")
      has_text = has_text or (bool(text) and not text.isspace())
  return has_text


def _train(files: list[str], out: Path, kind: Kind, vocab_size: int, lowercase: bool,
           min_frequency: int) -> None:
  if kind == "wordpiece":
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=lowercase)
    s = BERT_SPECIALS
    tok.train(files, vocab_size=vocab_size, min_frequency=min_frequency,
              special_tokens=[s.pad, s.unk, s.cls, s.sep, s.mask])
    tok.save_model(str(out))
    _write_config(out, "BertTokenizer", s, do_lower_case=lowercase)
  elif kind == "bpe":
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    s = ROBERTA_SPECIALS
    tok.train(files, vocab_size=vocab_size, min_frequency=min_frequency,
              special_tokens=[s.cls, s.pad, s.sep, s.unk, s.mask])
    tok.save_model(str(out))
    _write_config(out, "RobertaTokenizer", s)
  elif kind == "sentencepiece":
    import sentencepiece as spm

    s = ALBERT_SPECIALS
    # ALBERT's spm_train flags: pad 0, unk 1, control symbols [CLS] [SEP] [MASK], no bos/eos.
    try:
      spm.SentencePieceTrainer.train(
          input=",".join(files), model_prefix=str(out / "spiece"), vocab_size=vocab_size,
          model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
          control_symbols=[s.cls, s.sep, s.mask], character_coverage=0.9999,
          input_sentence_size=2_000_000, shuffle_input_sentence=True,
          normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc", minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size too high (200). Please set it to ..."
      raise TokenizerError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
    (out / "spiece.vocab").unlink(missing_ok=True)
    _write_config(out, "AlbertTokenizer", s, do_lower_case=False)


def _write_config(out: Path, cls_name: str, s, **extra) -> None:
  config = dict(tokenizer_class=cls_name, cls_token=s.cls, sep_token=s.sep, pad_token=s.pad,
                mask_token=s.mask, unk_token=s.unk, model_max_length=512, **extra)
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
