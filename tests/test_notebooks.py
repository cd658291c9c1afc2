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
  monkeypatch.setenv("MPLBACKEND", "Agg")
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
