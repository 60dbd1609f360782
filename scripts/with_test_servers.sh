#!/usr/bin/env bash
# Run a command with the test servers started (and always stopped afterwards): Postgres and MariaDB.
# Their URIs are exported as CEKURA_TEST_POSTGRES_URI and CEKURA_TEST_MARIADB_URI; a server whose URI is
# already set is used as it is (neither started nor stopped).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
started=()
cleanup() { for name in "${started[@]}"; do "$here/scripts/$name.sh" stop; done; }
trap cleanup EXIT INT TERM
if [ -z "${CEKURA_TEST_POSTGRES_URI:-}" ]; then
  uri="$("$here/scripts/postgres.sh" start)" || { echo "could not start Postgres" >&2; exit 1; }
  export CEKURA_TEST_POSTGRES_URI="$uri"
  started+=(postgres)
fi
if [ -z "${CEKURA_TEST_MARIADB_URI:-}" ]; then
  uri="$("$here/scripts/mariadb.sh" start)" || { echo "could not start MariaDB" >&2; exit 1; }
  export CEKURA_TEST_MARIADB_URI="$uri"
  started+=(mariadb)
fi
"$@"
