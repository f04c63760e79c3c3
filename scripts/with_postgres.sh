#!/usr/bin/env bash
# Run a command with TEST_POSTGRES_URL pointing at a PostgreSQL:
#   scripts/with_postgres.sh COMMAND [ARGS...]
# If TEST_POSTGRES_URL is already set, the command runs against that server unchanged.
# Otherwise a throwaway server (scripts/postgres.sh) starts on a free 127.0.0.1 port, the
# command runs with TEST_POSTGRES_URL exported, and the server and its data go on exit,
# whatever the command's outcome. The command's exit status is this script's.
set -euo pipefail
(($#)) || { echo "usage: with_postgres.sh COMMAND [ARGS...]" >&2; exit 2; }
if [[ -n "${TEST_POSTGRES_URL:-}" ]]; then
  exec "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

# Under /tmp, not $TMPDIR: the postgres user must reach the data directory, and its socket
# path (in the data directory) must stay short.
parent=$(mktemp -d /tmp/backbone-pg.XXXXXX)
chmod 755 "$parent"
pg_dir=$parent/pg
cleanup() {
  "$here/postgres.sh" stop "$pg_dir" || true
  rm -rf "$parent"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# A free port can be taken between the probe and the server's bind: try a few.
url=
for attempt in 1 2 3; do
  if url=$("$here/postgres.sh" start "$pg_dir" "$(free_port)"); then
    break
  fi
  url=
  # no server log: it never got as far as starting (not installed, initdb failed)
  [[ -f "$pg_dir/server.log" ]] || break
  echo "with_postgres.sh: PostgreSQL did not start (attempt $attempt):" >&2
  tail -n 5 "$pg_dir/server.log" >&2
done
if [[ -z "$url" ]]; then
  echo "with_postgres.sh: could not start a PostgreSQL for the tests; set TEST_POSTGRES_URL" \
    "to use an existing one" >&2
  exit 1
fi
export TEST_POSTGRES_URL=$url
echo "with_postgres.sh: TEST_POSTGRES_URL=$url" >&2

status=0
"$@" || status=$?
exit "$status"
