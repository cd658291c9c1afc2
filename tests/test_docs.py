"""The documentation runs as written.

- Every `bash` and `python` block of the README and of `docs/*.md` runs, page by page and top to
  bottom in a fresh folder that looks like a checkout (`configs/`, `launch/`, `benchmarks/`,
  `notebooks/` linked in), so a block may use what an earlier block of its page made. The blocks
  are read with pytest-codeblocks' extractor; a block that needs a cloud or a lent accelerator
  carries a `<!--pytest.mark.skip(reason=...)-->` comment, and its `bertjax` lines are still
  checked against the CLI by tests/test_readme_commands.py. A README block whose every line is,
  word for word, a line of a guide's block that runs is run there (the README's examples come
  from the guides); any other README block runs here. The three longest guides run in
  tests/test_docs_guides.py, so the two test workers share the pages.
- The substitutions (docs/index.md says them to the reader): `pip install` and `python3 -m venv`
  are skipped (this environment is the one the README's test command installed), `bertjax
  pretrain` / `finetune` run a few steps, `bertjax compile` compiles a one-layer, narrow
  model on 64 x 128 tokens with the preset's objective, mesh and topology, and `bertjax plan`
  plans that model at two layers (it calibrates on one and two), searching the `names` remat
  policy (and the given one) and compiling one plan besides the given one. Nothing else is changed.
- The Sphinx site (MyST guides, the notebooks through myst-nb, the API reference from the
  docstrings) builds with warnings as errors.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_codeblocks import extract_from_file

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LONG_GUIDES = ("embeddings.md", "finetuning.md", "planning.md")  # tests/test_docs_guides.py
CHECKOUT = ("configs", "launch", "benchmarks", "notebooks")

# the documented substitutions (docs/index.md, "How these pages are tested")
SHIMS = r"""
set -euo pipefail
pip() { echo "docs test: 'pip $*' skipped (installed by the test environment)"; }
python3() {
  if [ "${1-}" = -m ] && [ "${2-}" = venv ]; then mkdir -p "$3/bin" && : > "$3/bin/activate"
  else command python3 "$@"; fi
}
TINY="model.num_layers=1 model.hidden_size=64 model.num_heads=2 model.num_kv_heads=2
      model.head_dim=32 model.intermediate_size=128 data.max_seq_length=128 train.batch_size=64"
bertjax() {
  case "${1-}" in
    pretrain) command bertjax "$@" train.steps=4 ;;
    finetune) command bertjax "$@" train.epochs=0.02 ;;
    compile) command bertjax "$@" $TINY ;;
    plan) command bertjax "$@" $TINY model.num_layers=2 --remat names --top 1 ;;
    *) command bertjax "$@" ;;
  esac
}
"""


def blocks(page: Path):
  """(line, language, code, skip reason or None) for each bash/python block of a page."""
  out = []
  for block in extract_from_file(page):
    if block.syntax not in ("bash", "python"):
      continue
    skip = next((m for m in block.marks if m.startswith("pytest.mark.skip")), None)
    out.append((block.lineno, block.syntax, block.code, skip))
  return out


def test_every_page_has_its_blocks_read():
  found = {page.name: blocks(page) for page in PAGES}
  runnable = sum(1 for bs in found.values() for *_, skip in bs if skip is None)
  skipped = [(name, line) for name, bs in found.items() for line, *_, skip in bs if skip]
  assert runnable >= 15, runnable
  # what is skipped says why, and only cloud / device / the suite's own command are skipped
  for name, bs in found.items():
    for line, _, _, skip in bs:
      if skip:
        assert "reason=" in skip, f"{name}:{line}: a skipped block says why"
  assert len(skipped) <= 6, skipped


def _checkout(tmp_path: Path) -> Path:
  for name in CHECKOUT:
    (tmp_path / name).symlink_to(ROOT / name)
  return tmp_path


def _command_lines(code: str) -> list[str]:
  """A block's lines without trailing comments and blank lines, continuations joined."""
  lines = [re.sub(r"\s+#.*$", "", line).strip() for line in code.replace("\\\n", " ").splitlines()]
  return [line for line in lines if line and not line.startswith("#")]


def guide_lines() -> set[str]:
  return {line for page in PAGES[1:] for _, _, code, skip in blocks(page) if skip is None
          for line in _command_lines(code)}


def run_page(page: Path, tmp_path: Path) -> None:
  run = [(line, lang, code) for line, lang, code, skip in blocks(page) if skip is None]
  if page.name == "README.md":  # its examples run in the guides they come from
    covered = guide_lines()
    run = [(line, lang, code) for line, lang, code in run
           if not set(_command_lines(code)) <= covered]
  cwd = _checkout(tmp_path)
  env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
             PYTHONPATH=str(ROOT))
  env.pop("PYTEST_XDIST_WORKER", None)
  for line, lang, code in run:
    if lang == "bash":
      cmd = ["bash", "-c", SHIMS + code]
    else:
      cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{page.relative_to(ROOT)}:{line}: the {lang} block exited {proc.returncode}\n"
        f"--- block ---\n{code}--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (tail) ---\n{proc.stderr[-3000:]}")


SHORT = [p for p in PAGES if p.name not in LONG_GUIDES]


def test_the_readme_examples_are_the_guides_commands():
  """Each README block runs in a guide (verbatim) or here; today all but the test command's."""
  covered = guide_lines()
  readme = [code for _, _, code, skip in blocks(PAGES[0]) if skip is None]
  assert readme and all(set(_command_lines(code)) <= covered for code in readme)


@pytest.mark.parametrize("page", SHORT, ids=[p.relative_to(ROOT).as_posix() for p in SHORT])
def test_page_runs_as_written(page, tmp_path):
  run_page(page, tmp_path)


def test_the_site_builds_without_warnings(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                         str(ROOT / "docs"), str(tmp_path / "html")],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  api = (tmp_path / "html" / "api.html").read_text()
  assert api.count('class="sig-name') > 100  # the reference was generated, not left empty
  for page in ("notebooks/quickstart.html", "benchmarks.html", "cloud-tpu.html"):
    assert (tmp_path / "html" / page).exists(), page
