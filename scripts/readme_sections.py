"""Replace a generated section of README.md between ``<!-- name:start -->`` and ``<!-- name:end -->``.

Used by the scripts that measure things (reliability report, benchmarks) so the README's figures
always come from a run, never from a hand edit.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_URLS = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
DOCS_URL = _URLS["Documentation"].rstrip("/")
"""The docs site (``[project.urls]``): a page ``docs/x.md`` is ``{DOCS_URL}/x.html``."""
REPO_URL = _URLS["Source"].rstrip("/")
"""The repository: a file is ``{REPO_URL}/blob/main/<path>``, a directory ``{REPO_URL}/tree/main/<path>``."""


def docs_link(page: str, anchor: str = "") -> str:
    """Absolute URL of ``docs/<page>.md`` on the docs site (the README is the package index page)."""
    return f"{DOCS_URL}/{page}.html" + (f"#{anchor}" if anchor else "")


def repo_link(path: str) -> str:
    """Absolute URL of a file or directory of the repository."""
    kind = "tree" if (README.parent / path).is_dir() else "blob"
    return f"{REPO_URL}/{kind}/main/{path}"


def replace_section(name: str, body: str, readme: Path = README) -> bool:
    """Put ``body`` between the ``name`` markers; returns False (and changes nothing) without markers."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(\n<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + body.strip() + m.group(2), text), encoding="utf-8")
    return True
