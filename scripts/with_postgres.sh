#!/usr/bin/env bash
# Run a command with the test Postgres started (and always stopped afterwards).
# The URI is exported as CEKURA_TEST_POSTGRES_URI.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
started=0
if [ -z "${CEKURA_TEST_POSTGRES_URI:-}" ]; then
  uri="$("$here/scripts/postgres.sh" start)" || { echo "could not start Postgres" >&2; exit 1; }
  export CEKURA_TEST_POSTGRES_URI="$uri"
  started=1
fi
cleanup() { [ "$started" = 1 ] && "$here/scripts/postgres.sh" stop; }
trap cleanup EXIT INT TERM
"$@"
