#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1:${PGPORT:-55432} for the store tests and prints the
# URL to use as DEPLOYLITE_TEST_POSTGRES_URL. Installs the server from Debian if it is missing.
# Idempotent: a server already answering on the port is reused.
set -euo pipefail
port=${PGPORT:-55432}
dir=${PGDATA_DIR:-/tmp/deploylite-pg-$port}
url="postgres://postgres@127.0.0.1:$port/postgres"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  echo "$url"
  exit 0
fi

# PostgreSQL refuses to run as root: run it as an unprivileged user.
run_as=""
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  run_as="postgres"
fi
as_pg() { if [ -n "$run_as" ]; then su "$run_as" -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

rm -rf "$dir"
mkdir -p "$dir"
[ -n "$run_as" ] && chown "$run_as" "$dir"
as_pg "'$bin/initdb' -D '$dir/data' -A trust -U postgres --no-sync" >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
# Durability is not under test here; speed is welcome.
as_pg "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300\" start" >&2 \
  || { cat "$dir/server.log" >&2; exit 1; }
echo "$url"
