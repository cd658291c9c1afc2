"""The CLI's warm start (JAX's persistent compilation cache by default) and `bertjax doctor`."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bertjax import cli
from bertjax.environment import compilation_cache_dir

from pretrain_helpers import overrides

ROOT = Path(__file__).resolve().parent.parent


def test_the_cache_folder_setting(monkeypatch, tmp_path):
  monkeypatch.delenv("BERTJAX_COMPILATION_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache_dir() == str(tmp_path / "xdg" / "bertjax" / "jax")
  monkeypatch.setenv("BERTJAX_COMPILATION_CACHE", str(tmp_path / "mine"))
  assert compilation_cache_dir() == str(tmp_path / "mine")
  for off in ("off", "0", "OFF", "none"):
    monkeypatch.setenv("BERTJAX_COMPILATION_CACHE", off)
    assert compilation_cache_dir() is None


def test_a_second_run_compiles_nothing(books, tmp_path):
  """Two pretraining commands of the same shapes: the first fills the default cache folder, the
  second reads every program back (no new entry). `off` turns it off; JAX's own setting wins."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")
         and k != "JAX_COMPILATION_CACHE_DIR"}
  env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
  cache = tmp_path / "xdg" / "bertjax" / "jax"

  def pretrain(run, **extra):
    out = subprocess.run([sys.executable, "-m", "bertjax.cli", "pretrain",
                          *overrides(tmp_path / run, books, "train.steps=2")],
                         capture_output=True, text=True, env={**env, **extra}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]

  pretrain("one")
  first = sorted(p.name for p in cache.iterdir())
  assert len(first) >= 2  # the train and eval steps at least
  pretrain("two")
  assert sorted(p.name for p in cache.iterdir()) == first
  check = "from bertjax.environment import use_compilation_cache as u; print(u())"
  for setting, expected in (("off", "None"), (str(tmp_path / "mine"), str(tmp_path / "mine"))):
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env={**env, "BERTJAX_COMPILATION_CACHE": setting})
    assert out.stdout.strip() == expected, out.stderr[-2000:]
  out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                       env={**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")})
  assert out.stdout.strip() == str(tmp_path / "jax")  # JAX's own setting wins


def test_doctor_reports_what_a_bug_report_needs(capsys):
  assert cli.main(["doctor", "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert {"bertjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"} <= set(
      r["packages"])
  assert r["devices"]["count"] == 8 and r["devices"]["kinds"] == {"cpu": 8}
  assert r["processes"] == {"count": 1, "index": 0}
  assert r["gs"].startswith("supported") and r["compilation_cache"] != "off"
  assert cli.main(["doctor"]) == 0
  text = capsys.readouterr().out
  assert "packages" in text and "compilation_cache" in text
  out = subprocess.run([sys.executable, "-m", "bertjax.cli", "--version"], capture_output=True,
                       text=True)
  assert out.returncode == 0 and out.stdout.startswith("bertjax ")
