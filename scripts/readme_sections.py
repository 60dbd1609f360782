"""Replace a generated section of README.md between ``<!-- name:start -->`` and ``<!-- name:end -->``.

Used by the scripts that measure things (reliability report, benchmarks) so the README's figures
always come from a run, never from a hand edit.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(name: str, body: str, readme: Path = README) -> bool:
    """Put ``body`` between the ``name`` markers; returns False (and changes nothing) without markers."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(\n<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + body.strip() + m.group(2), text), encoding="utf-8")
    return True
