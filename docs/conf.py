"""Sphinx configuration for the sb3-tensorpatch documentation.

Build (warnings are errors, as in CI)::

    pip install -r docs/requirements.txt
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the package, also when it is not installed

import sb3_tensorpatch  # noqa: E402

project = "sb3-tensorpatch"
author = "sb3-tensorpatch developers"
copyright = "sb3-tensorpatch developers"
release = sb3_tensorpatch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "patch_table",  # docs/_ext/patch_table.py: the versions page, generated from the patch table
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []

# HTML
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - the alabaster fallback
    html_theme = "alabaster"
html_title = f"sb3-tensorpatch {release}"
html_static_path = ["_static"]
html_css_files = ["patch-table.css"]
