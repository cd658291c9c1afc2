"""One tokenizer interface: WordPiece / byte-level BPE / SentencePiece trained offline, the BERT
and RoBERTa pair templates, longest-first truncation, offsets and word ids -- checked against the
transformers tokenizers on the same files."""

import json

import pytest
import transformers as T

from bertjax.data.corpus import SHIPPED_TOKENIZERS
from bertjax.data.sources import CORPUS_DIR
from bertjax.data.tokenizer import Tokenizer, TokenizerError
from bertjax.data.train_tokenizer import train_tokenizer

TEXT = """It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. However little known the feelings or views of such a man may be on his
first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding
families, that he is considered the rightful property of some one or other of their daughters.
In the beginning God created the heaven and the earth. And the earth was without form, and void;
and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the
waters. Unbelievably, the tokenization of extraordinary words splits them into pieces."""

SENTENCES = [("The single man moved upon the waters.", "Darkness was upon the face of the deep!"),
             ("Unbelievably extraordinary tokenization", "A wife, a fortune; a neighbourhood."),
             ("short", "x " * 40)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "text.txt"
  path.write_text("\n".join([TEXT] * 20))
  return path


@pytest.fixture(scope="module")
def wordpiece(corpus, tmp_path_factory):
  return train_tokenizer([corpus], tmp_path_factory.mktemp("wp"), kind="wordpiece", vocab_size=300)


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
  return train_tokenizer([corpus], tmp_path_factory.mktemp("bpe"), kind="bpe", vocab_size=400)


@pytest.fixture(scope="module")
def spm(corpus, tmp_path_factory):
  return train_tokenizer([corpus], tmp_path_factory.mktemp("spm"), kind="sentencepiece",
                         vocab_size=100)


@pytest.mark.parametrize("max_length", [None, 12, 24])
def test_wordpiece_matches_bert_tokenizer(wordpiece, max_length):
  ours = Tokenizer.from_dir(wordpiece)
  hf = T.AutoTokenizer.from_pretrained(wordpiece)
  for a, b in SENTENCES:
    kw = dict(truncation="longest_first", max_length=max_length) if max_length else {}
    ref = hf(a, b, **kw)
    enc = ours.encode(a, b, max_length=max_length)
    assert enc.ids == ref["input_ids"]
    assert enc.type_ids == ref["token_type_ids"]
    assert ours.encode(a).ids == hf(a)["input_ids"]


@pytest.mark.parametrize("max_length", [None, 14])
def test_byte_bpe_matches_roberta_template(bpe, max_length):
  ours = Tokenizer.from_dir(bpe)
  hf = T.AutoTokenizer.from_pretrained(bpe)
  for a, b in SENTENCES:
    kw = dict(truncation="longest_first", max_length=max_length) if max_length else {}
    enc = ours.encode(a, b, max_length=max_length)
    assert enc.ids == hf(a, b, **kw)["input_ids"]  # <s> A </s></s> B </s>
    assert set(enc.type_ids) == {0}
  assert ours.tokenize("hello world")[0] == hf("hello world", add_special_tokens=False)["input_ids"]


def test_sentencepiece_albert_style(spm):
  ours = Tokenizer.from_dir(spm)
  assert (ours.pad_id, ours.unk_id) == (0, 1)
  assert ours.specials.cls == "[CLS]" and ours.specials.mask == "[MASK]"
  enc = ours.encode("The waters moved.", "Darkness was upon the deep.")
  assert enc.ids[0] == ours.cls_id and enc.ids.count(ours.sep_id) == 2
  assert enc.type_ids[-1] == 1 and enc.type_ids[0] == 0
  text = "Darkness was upon the face"
  ids, offsets, words = ours.tokenize(text)
  # every piece maps back to its characters; word ids increase at each "\u2581" word start
  assert "".join(text[s:e] for s, e in offsets).replace(" ", "") == text.replace(" ", "")
  assert words[0] == 0 and words[-1] == len(text.split()) - 1
  assert words == sorted(words)


def test_offsets_and_word_ids(wordpiece):
  tok = Tokenizer.from_dir(wordpiece)
  text = "Undeniably fortuitous neighbourliness"  # unseen words: several pieces each
  enc = tok.encode(text)
  assert enc.word_ids[0] is None and enc.word_ids[-1] is None
  pieces = [tok.id_to_token(i) for i in enc.ids[1:-1]]
  for piece, (s, e), w in zip(pieces, enc.offsets[1:-1], enc.word_ids[1:-1]):
    assert text[s:e].lower() == piece.removeprefix("##")
    assert text.split()[w].lower().find(piece.removeprefix("##")) >= 0
  # continuation pieces share the word id of their word start
  assert len(set(enc.word_ids[1:-1])) == 3 < len(pieces)


def test_pair_truncation_is_longest_first(wordpiece):
  tok = Tokenizer.from_dir(wordpiece)
  enc = tok.encode("a " * 5, "b " * 30, max_length=16)
  assert len(enc) == 16
  assert enc.sequence_ids.count(0) == 5  # the short side is untouched
  with pytest.raises(TokenizerError, match="too short"):
    tok.encode("a", "b", max_length=2)


def test_real_minilm_tokenizer_matches_transformers():
  import weights

  path = weights.minilm()
  ours = Tokenizer.from_dir(path)
  hf = T.AutoTokenizer.from_pretrained(path)
  for a, b in SENTENCES:
    assert ours.encode(a, b, max_length=20).ids == hf(a, b, truncation=True, max_length=20)["input_ids"]


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
  with pytest.raises(TokenizerError, match="no tokenizer.json, vocab.txt"):
    Tokenizer.from_dir(tmp_path)
  (tmp_path / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(TokenizerError, match=r"special token '\[CLS\]'"):
    Tokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(TokenizerError, match="invalid JSON"):
    Tokenizer.from_dir(tmp_path)


def test_sentencepiece_vocab_too_large_is_one_line(corpus, tmp_path):
  with pytest.raises(TokenizerError, match="Vocabulary size too high"):
    train_tokenizer([corpus], tmp_path, kind="sentencepiece", vocab_size=5000)


def test_trained_files_load_in_transformers(wordpiece, spm):
  cfg = json.loads((wordpiece / "tokenizer_config.json").read_text())
  assert cfg["tokenizer_class"] == "BertTokenizer"
  hf = T.AutoTokenizer.from_pretrained(wordpiece)
  assert hf("the waters")["input_ids"] == Tokenizer.from_dir(wordpiece).encode("the waters").ids


def _byte_level_tokenizer(folder, style: str):
  """A ModernBERT-style (GPT-NeoX: byte-level BPE, [CLS]/[SEP]) or EuroBERT-style (Llama 3:
  regex split + byte-level BPE, <|begin_of_text|>) tokenizer.json over the shipped BPE vocab."""
  from tokenizers import Regex, Tokenizer as RustTokenizer, decoders, models, pre_tokenizers
  from tokenizers import processors

  src = CORPUS_DIR / SHIPPED_TOKENIZERS["corpus-bpe"]
  vocab = json.loads((src / "vocab.json").read_text())
  merges = [tuple(line.split()) for line in (src / "merges.txt").read_text().splitlines()[1:]
            if line.strip()]
  tok = RustTokenizer(models.BPE(vocab=vocab, merges=merges))
  if style == "modernbert":
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    specials = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                    mask_token="[MASK]", unk_token="[UNK]")
  else:
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    specials = dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                    cls_token="<|begin_of_text|>", sep_token="<|end_of_text|>",
                    pad_token="<|pad|>", mask_token="<|mask|>")
  tok.add_special_tokens(sorted(set(specials.values())))
  cls, sep = specials["cls_token"], specials["sep_token"]
  tok.post_processor = processors.TemplateProcessing(
      single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
      special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
  tok.decoder = decoders.ByteLevel()
  folder.mkdir()
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      dict(tokenizer_class="PreTrainedTokenizerFast", **specials)))
  return folder


@pytest.mark.parametrize("style", ["roberta", "modernbert", "eurobert"])
def test_pre_split_words_match_transformers_is_split_into_words(style, tmp_path):
  """NER features tokenize each word as transformers' fast tokenizers do with
  is_split_into_words=True -- token ids and each word's first token. RoBERTa's tokenizer needs
  (and gets) add_prefix_space=True: every word in its running-text form ("Ġword"); transformers
  5 tokenizes ModernBERT/EuroBERT-style words as they are (add_prefix_space has no effect there)."""
  from bertjax.tasks.features import token_features

  if style == "roberta":
    folder, kw = CORPUS_DIR / SHIPPED_TOKENIZERS["corpus-bpe"], {"add_prefix_space": True}
  else:
    folder, kw = _byte_level_tokenizer(tmp_path / style, style), {}
  ours = Tokenizer.from_dir(folder)
  hf = T.AutoTokenizer.from_pretrained(str(folder), **kw)
  sentences = [["Elizabeth", "Bennet", "went", "to", "London", "'s", "docks", "."],
               ["Café", "naïve", "co-operate", "U.S.", "2026", "1,000", "don't", "Émile"],
               ["a", "b", "..."]]
  feats, starts = token_features([{"tokens": s, "tags": None} for s in sentences], ours, ("O",),
                                 64)
  for i, words in enumerate(sentences):
    enc = hf(words, is_split_into_words=True)
    n = int(feats["padding_mask"][i].sum())
    assert feats["input_ids"][i][:n].tolist() == enc["input_ids"]
    assert starts[i].tolist() == [enc.word_ids().index(w) for w in range(len(words))]


def test_the_shipped_bert_vocabulary_is_bert_base_uncased():
  """data.tokenizer=bert-base-uncased: BERT's 30,522 uncased WordPiece entries, tokenizing as
  transformers' BertTokenizer reading the same folder does."""
  import hashlib

  from bertjax.data.corpus import SHIPPED_TOKENIZERS

  folder = SHIPPED_TOKENIZERS["bert-base-uncased"]
  assert hashlib.sha256((folder / "vocab.txt").read_bytes()).hexdigest() == \
      "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
  assert (folder / "LICENSE").read_text().lstrip().startswith("Apache License")
  ours = Tokenizer.from_dir(folder)
  hf = T.AutoTokenizer.from_pretrained(folder)  # the folder as transformers reads it
  assert ours.vocab_size == 30522 and (ours.pad_id, ours.mask_id) == (0, 103)
  for a, b in SENTENCES:
    assert ours.encode(a, b, max_length=32).ids == hf(a, b, truncation=True,
                                                       max_length=32)["input_ids"]
