#!/usr/bin/env bash
# Fails when a workspace crate depends on a workspace crate it must not (ARCHITECTURE.md,
# "Crates"): dependencies point one way, from the binary down to the pipeline model, so that
# the runner agent never links the server, the webhooks never reach into the server, and the
# wire types stay free of everything else. Also fails when a workspace crate is missing from
# the table below: a new crate says where it sits before it builds.
#
# Normal and build dependencies must be in the crate's row; dev-dependencies too, except
# deploylite-testkit, which any crate's tests may use (and nothing else may). Reads
# `cargo metadata` (no build, no network).
set -euo pipefail
cd "$(dirname "$0")/.."

# crate -> the workspace crates it may depend on ("*": any of them).
# deploylite-model is in no other crate's row: every crate may use it (`leaf` below).
declare -A allowed=(
  [deploylite-model]=""
  [deploylite-pipeline]=""
  [deploylite-telemetry]=""
  [deploylite-policy]="deploylite-pipeline"
  [deploylite-protocol]="deploylite-pipeline"
  [deploylite-runner]="deploylite-pipeline deploylite-protocol deploylite-telemetry"
  [deploylite-reconciler]="deploylite-pipeline deploylite-policy deploylite-protocol deploylite-runner deploylite-telemetry"
  [deploylite-forge]="deploylite-pipeline deploylite-policy deploylite-reconciler deploylite-runner deploylite-telemetry"
  [deploylite-webhook]="deploylite-forge deploylite-reconciler deploylite-telemetry"
  [deploylite-server]="deploylite-forge deploylite-policy deploylite-protocol deploylite-reconciler deploylite-telemetry deploylite-webhook"
  [deploylite-testkit]="deploylite-runner"
  [deploylite]="*"
)
test_only=deploylite-testkit
# The domain vocabulary: a leaf (it depends on no workspace crate) that any crate may use.
leaf=deploylite-model

metadata=$(cargo metadata --format-version 1 --no-deps --locked)
workspace=$(jq -r '.packages[].name' <<<"$metadata" | sort)
# One line per dependency on a workspace crate: "crate kind dependency" (kind: normal, dev, build).
edges=$(jq -r '
  (.packages | map(.name)) as $ours
  | .packages[] | .name as $crate
  | .dependencies[] | select(.name as $d | $ours | index($d))
  | "\($crate) \(.kind // "normal") \(.name)"' <<<"$metadata")

errors=0
fail() {
  echo "error: $*" >&2
  errors=$((errors + 1))
}

for crate in $workspace; do
  [[ -v "allowed[$crate]" ]] ||
    fail "$crate is not in the dependency table of .ci/deps.sh: add its row (and its place in ARCHITECTURE.md)"
done

while read -r crate kind dep; do
  [ -n "$crate" ] || continue
  [[ -v "allowed[$crate]" ]] || continue
  if [ "$dep" = "$test_only" ]; then
    [ "$kind" = dev ] || fail "$crate depends on $dep as a $kind dependency: it is for tests only"
    continue
  fi
  [ "$dep" = "$leaf" ] && continue
  row=${allowed[$crate]}
  [ "$row" = "*" ] && continue
  case " $row " in
    *" $dep "*) ;;
    *) fail "$crate must not depend on $dep ($kind dependency); it may use: ${row:-no workspace crate}" ;;
  esac
done <<<"$edges"

if [ "$errors" -gt 0 ]; then
  echo "the dependency direction is broken in $errors place(s); see ARCHITECTURE.md, \"Crates\"" >&2
  exit 1
fi
echo "dependency direction: $(wc -w <<<"$workspace") crates, every edge allowed"
