"""Sphinx configuration of the user guide and API reference (``make docs``: ``sphinx-build -W``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

project = "airflow-provider-cekura"
author = "airflow-provider-cekura developers"
release = version = _project["version"]
copyright = "the airflow-provider-cekura developers"

extensions = ["myst_parser", "autoapi.extension"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "autoapi/_templates"]

# Markdown: the README and the guide pages; "#anchor" links to headings up to level 4.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
suppress_warnings = [
    "myst.header",  # the README's "### Rate limits" sits under the hook's "##" on purpose
    # version_compat.py resolves Airflow's names per line at run time; autoapi reads the source only
    "autoapi.python_import_resolution",
]

# API reference generated from the docstrings (reST fields, :class: roles), without importing Airflow.
autoapi_type = "python"
autoapi_dirs = [str(ROOT / "airflow_provider_cekura")]
autoapi_root = "autoapi"
autoapi_add_toctree_entry = False
autoapi_keep_files = False
autoapi_options = ["members", "undoc-members", "show-inheritance", "show-module-summary", "imported-members"]
autoapi_ignore = ["*/testing/__main__.py"]

# Every cross-reference to this package must resolve (a :class: role broken over two lines used to render as
# plain text unnoticed). Names outside it (Airflow, the standard library, requests) have no inventory offline;
# version_compat's names are Airflow's, chosen per line; private modules are not in the reference.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!airflow_provider_cekura\.).*"),
    (r"py:.*", r"airflow_provider_cekura\.version_compat\..*"),
    (r"py:.*", r"airflow_provider_cekura\.(\w+\.)*_\w+(\..*)?"),
]

html_theme = "alabaster"
html_title = f"airflow-provider-cekura {release}"
