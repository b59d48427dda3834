#!/bin/sh
# Starts DeployLite on the bundled example projects with the embedded defaults (SQLite, local
# filesystem, local executor). Each examples/repos/* project is first turned into a git
# repository under the data dir (once; later runs reuse them, so you can commit to them).
set -eu
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
    echo "created example repository $dst"
  fi
done
cd "$here/.."
if [ -n "${DEPLOYLITE_BIN:-}" ]; then
  exec "$DEPLOYLITE_BIN" serve --config examples/deploylite.yaml "$@"
fi
exec cargo run --quiet --bin deploylite -- serve --config examples/deploylite.yaml "$@"
