#!/bin/sh
# Starts DeployLite on the bundled example projects with the embedded defaults (SQLite, local
# filesystem, local executor). Each examples/repos/* project is first turned into a git
# repository under the data dir (once; later runs reuse them, so you can commit to them).
#
# Says what it is doing before the daemon's own log starts: building (with cargo's progress,
# and its notice when another cargo holds the build lock), starting, and where to look.
# DEPLOYLITE_BIN=path/to/deploylite skips the build.
set -eu
say() { printf 'serve.sh: %s\n' "$*"; }
here=$(cd "$(dirname "$0")" && pwd)
repos="$here/../.deploylite-data/example-repos"
mkdir -p "$repos"
for src in "$here"/repos/*/; do
  name=$(basename "$src")
  dst="$repos/$name"
  if [ ! -d "$dst/.git" ]; then
    mkdir -p "$dst"
    cp -R "$src/." "$dst/"
    git -C "$dst" init --quiet --initial-branch=main
    git -C "$dst" add --all
    git -C "$dst" -c user.name="DeployLite examples" -c user.email=examples@deploylite.invalid \
      commit --quiet --message "Import the $name example"
    say "created example repository $dst"
  fi
done
cd "$here/.."
if [ -n "${DEPLOYLITE_BIN:-}" ]; then
  bin=$DEPLOYLITE_BIN
else
  say "building deploylite (cargo build --bin deploylite; the first build takes a few minutes)"
  # Cargo prints its progress on stderr; on stdout, the JSON messages name the executable,
  # wherever CARGO_TARGET_DIR or a cargo config puts it.
  bin=$(cargo build --bin deploylite --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    say "the build failed (see cargo's messages above)" >&2
    exit 1
  fi
fi
# Where the API listens: the config file, then DEPLOYLITE_LISTEN, then --listen (as serve reads it).
listen=$(sed -n 's/^listen:[[:space:]]*//p' examples/deploylite.yaml)
listen=${DEPLOYLITE_LISTEN:-$listen}
previous=
for arg in "$@"; do
  case $previous in --listen) listen=$arg ;; esac
  case $arg in --listen=*) listen=${arg#--listen=} ;; esac
  previous=$arg
done
say "starting deploylite serve --config examples/deploylite.yaml${*:+ $*} ($bin)"
say "API: http://${listen:-127.0.0.1:8080}/api/v1/runs (the daemon's log follows)"
say "in another terminal: $bin status | $bin status RUN | $bin logs RUN -f"
exec "$bin" serve --config examples/deploylite.yaml "$@"
