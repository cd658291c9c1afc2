"""Test setup: 8 fake CPU devices (sharding tests), the persistent compilation cache, offline HF."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libtpu is installed (bertjax compile's tests): the CPU stays the only backend, and libtpu
# neither queries a metadata server nor takes its one-process lock (subprocesses inherit this)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402

_cache = Path(os.environ.get("BERTJAX_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
# through the environment, so the CLI runs the tests start as subprocesses share the device
# count and the persistent compilation cache (a program compiled once is read back by all)
os.environ.update(JAX_NUM_CPU_DEVICES="8", JAX_COMPILATION_CACHE_DIR=str(_cache / "jax"),
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", str(_cache / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain's multiprocess prefetch reads absl flags (google/grain#1355)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def books(tmp_path_factory):
  """The first 400 paragraphs of every shipped book (pretrain_helpers.small_corpus)."""
  from pretrain_helpers import small_corpus

  return small_corpus(tmp_path_factory.mktemp("books") / "books.txt")


@pytest.fixture(scope="session")
def straight_run(books, tmp_path_factory):
  """The reference run, once per session: pretrain_helpers.config's 8 steps on ``books`` on
  the default mesh (8-way data parallel) -> (run folder, summary). Read it, never write it."""
  from bertjax.train.pretrain import pretrain
  from pretrain_helpers import config

  run = tmp_path_factory.mktemp("straight") / "run"
  return run, pretrain(config(run, books), quiet=True)


# The longest files first (seconds of one file on one of the two CI workers, 2026-12-05):
# `-n 2 --dist loadfile` hands out whole files in collection order, so a long file drawn last
# would leave the other worker idle at the end. Ordered longest first, the tail is short files.
LONGEST_FIRST = ("test_finetune.py", "test_recipes.py", "test_notebooks.py", "test_pretrain.py",
                 "test_scan_remat.py", "test_compile.py", "test_docs_guides.py",
                 "test_run_integrity.py", "test_gcs.py", "test_sharding.py", "test_docs.py",
                 "test_launcher.py", "test_step.py", "test_long_context.py", "test_distill.py",
                 "test_embedding_task.py", "test_contrastive.py", "test_device_check.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
