"""Sphinx configuration: MyST Markdown guides, the notebooks rendered by myst-nb (not executed
here: tests/test_notebooks.py executes them), and an API reference from the docstrings.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (tests/test_docs.py runs it)."""

import importlib.metadata

project = "bertjax"
author = "the bertjax authors"
release = importlib.metadata.version("bertjax")
version = release

extensions = [
    "myst_nb",  # MyST Markdown and .ipynb pages (myst-parser included)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style Args:/Returns: sections
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "notebooks/.ipynb_checkpoints", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks run in tests/test_notebooks.py, with a real kernel

# docstrings write `code` as Markdown does: render single backticks as literal text
default_role = "literal"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"bertjax {release}"
