"""The README's module map lists every module of the package, and nothing that is not there."""

from __future__ import annotations

import re

from conftest import ROOT

PACKAGE = ROOT / "airflow_provider_cekura"


def listed_modules() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- module-map:start -->")[1].split("<!-- module-map:end -->")[0]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines():
        if not line.startswith("  ") or not line.strip():
            continue
        if not line.startswith("   "):  # an entry (a deeper indent continues the one above)
            first = line.split()[0]
            folder = first if first.endswith("/") else (first.rsplit("/", 1)[0] + "/" if "/" in first else "")
        for name in re.findall(r"[\w/]+\.py", line):
            listed.add(name if "/" in name else folder + name)
    return listed


def test_the_readme_module_map_matches_the_package() -> None:
    actual = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if not (path.name == "__init__.py" and path.parent != PACKAGE)
    }
    listed = listed_modules()
    assert sorted(actual - listed) == [], "modules missing from the README's module map"
    assert sorted(listed - actual) == [], "the README's module map names modules that do not exist"
