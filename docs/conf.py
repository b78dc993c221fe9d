"""Sphinx configuration: the API reference from the docstrings (autodoc, Google-style
sections through napoleon), the guides in reStructuredText and Markdown (myst-parser).

Built by ``.ci/lint`` with warnings as errors::

    python3 -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "devmodels"
author = "the devmodels authors"
copyright = "the devmodels authors"  # noqa: A001 - Sphinx's name

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# The reference documents what the packages export (``__all__``), in source order, with the
# signatures' type hints in the description rather than in the signature line.
autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" sections become fields of their class, not attribute entries of their own
# (which would collide with the dataclass fields autodoc lists).
napoleon_use_ivar = True

# Markdown guides link to each other and to headings (CONVENTIONS.md#sans-io).
myst_heading_anchors = 3

html_theme = "alabaster"
html_theme_options = {"description": "Reusable I/O device models for VMMs", "fixed_sidebar": True}
html_static_path: list[str] = []

# Type hints name classes the reference does not document one by one (``construct``
# structs, typing aliases); a reference that cannot resolve is not worth failing the build.
nitpicky = False
suppress_warnings = ["myst.xref_missing"]
