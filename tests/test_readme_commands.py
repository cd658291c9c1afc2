"""Every `bertjax ...` command in the shell blocks of the README and of docs/*.md (illustrative
blocks included: those that need a cloud and do not run in tests/test_docs.py) parses as the CLI has it, its
preset and key=value overrides load into a config (a renamed key or a bad value in the docs
fails here), and every word zsh would glob (`[`, `]`, `*`, `?`) is quoted. The blocks are read
with markdown-it-py (rich's own Markdown parser); running them is the work of the tests that
exercise each command."""

import re
import shlex
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from bertjax.cli import _preset_and_overrides, parse_args
from bertjax.config import experiment_config, finetune_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}


def shell_lines() -> list[str]:
  """The pages' bash/sh/shell blocks as logical lines (continuations joined, comments cut)."""
  out = []
  tokens = [t for page in PAGES for t in MarkdownIt().parse(page.read_text())]
  for token in tokens:
    if token.type == "fence" and token.info.strip() in ("bash", "sh", "shell", "console", ""):
      text = token.content.replace("\\\n", " ")
      for line in text.splitlines():
        words = shlex.shlex(line, posix=True, punctuation_chars=True)
        words.whitespace_split = True
        try:
          if list(words):
            out.append(line)
        except ValueError:  # not a shell line (a table, output)
          continue
  return out


def commands() -> list[tuple[str, list[str]]]:
  """(the line, the argv after each `bertjax` word it runs)."""
  found = []
  for line in shell_lines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    for i, word in enumerate(words):
      if word == "bertjax" and (i == 0 or words[i - 1] in OPERATORS | {"--", "time"}):
        argv = []
        for w in words[i + 1:]:
          if w in OPERATORS:
            break
          argv.append(w)
        found.append((line.strip(), argv))
  return found


COMMANDS = commands()


def test_the_docs_show_commands():
  assert len(COMMANDS) >= 20
  assert {argv[0] for _, argv in COMMANDS} >= {"pretrain", "finetune", "compile", "prepare-data",
                                               "embed", "import-hf", "evaluate", "predict"}


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"{i}-{a[0]}" for i, (_, a) in
                                                     enumerate(COMMANDS)])
def test_a_readme_command_parses_and_loads(line, argv):
  if argv == ["--version"]:
    pytest.raises(SystemExit, parse_args, argv)  # prints the version and exits 0
    return
  args = parse_args(argv)  # a usage error exits: the docs drifted from the CLI
  if args.command in ("pretrain", "compile", "prepare-data"):
    preset, overrides = _preset_and_overrides(args.args)
    experiment_config(preset, overrides)
  elif args.command == "finetune":
    finetune_config(args.task, args.overrides)


@pytest.mark.parametrize("line", sorted({line for line, _ in COMMANDS}))
def test_zsh_globs_nothing(line):
  lexer = shlex.shlex(line, posix=False)  # keeps the quotes on quoted words
  lexer.whitespace_split = True
  lexer.commenters = "#"
  bare = [w for w in lexer if not w.startswith(("'", '"')) and re.search(r"[\[\]*?]", w)]
  assert not bare, f"unquoted {bare}: zsh takes them for globs (no matches found)"
