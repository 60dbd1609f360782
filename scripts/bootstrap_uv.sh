#!/usr/bin/env bash
# uv for this checkout when none is on PATH, without root: a private virtualenv in .tools/ (python3 -m venv
# .tools && .tools/bin/pip install uv). Where the venv module has no pip (Debian without python3-venv), pip
# installs uv with --target into .tools/ instead (PEP 668 does not apply to --target). Never touches the
# system's Python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tools="$here/.tools"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "need python3 >= 3.11 (found: $("$python" --version 2>&1 || echo none))" >&2
  exit 1
fi
if [ -x "$tools/bin/uv" ]; then exit 0; fi
echo "uv is not on PATH: installing it into $tools (a private virtualenv, no root needed)..." >&2
rm -rf "$tools"
if "$python" -m venv "$tools" >/dev/null 2>&1 && [ -x "$tools/bin/pip" ]; then
  "$tools/bin/pip" install --quiet --disable-pip-version-check uv
elif "$python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$tools"
  "$python" -m pip install --quiet --disable-pip-version-check --target "$tools/lib" uv
  mkdir -p "$tools/bin"
  ln -sf "$tools/lib/bin/uv" "$tools/bin/uv"
else
  echo "cannot install uv: python3 has neither a working venv module nor pip. Install one of them" >&2
  echo "(Debian/Ubuntu: apt-get install python3-venv), or uv itself (https://docs.astral.sh/uv/getting-started/installation/)." >&2
  exit 1
fi
"$tools/bin/uv" --version >&2
