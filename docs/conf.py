"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html`` (CI runs exactly that).

The API reference and the spec's knob tables are read from the code of this checkout (the
repository root goes first on ``sys.path``), so they describe the source being documented,
whichever copy of ``hpo`` is installed.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))

project = "hpo"
author = "the hpo authors"
copyright = "the hpo authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "hpo_knobs",  # docs/_ext/hpo_knobs.py: the spec's tables, drawn from hpo/spec
]

exclude_patterns = ["_build"]
# Text in ``double backquotes`` is code; a bare `name` is a cross-reference to Python.
default_role = "py:obj"
nitpicky = False

autosummary_generate = True
autosummary_imported_members = False
# Each name is documented once, in the module that defines it: a package's __all__ re-exports
# (hpo.Spec is hpo.spec.schema.Spec) would describe it twice and make every reference ambiguous.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Optional extras a module imports at its top; the docs build needs none of them installed.
autodoc_mock_imports = ["lightning", "pytorch_lightning"]
suppress_warnings = ["autosummary.import_cycle"]

html_theme = "alabaster"
html_title = "hpo"
html_static_path: list[str] = []
html_theme_options = {"description": "stable, accurate settings for text classifiers", "page_width": "1100px"}
