"""The three longest guides run as written (tests/test_docs.py says how), in their own file so
that the suite's two workers share the documentation's pages."""

import pytest

from test_docs import LONG_GUIDES, ROOT, run_page

GUIDES = [ROOT / "docs" / name for name in LONG_GUIDES]


@pytest.mark.parametrize("page", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_runs_as_written(page, tmp_path):
  run_page(page, tmp_path)
