#!/bin/sh
# Drift check: exit 0 in sync, 2 drifted, anything else unknown. The live page must be the
# committed one of the current version.
set -eu
host="${DEPLOY_ROOT:-/tmp/deploylite-example-hosts}/$DEPLOYLITE_ENVIRONMENT"
if [ ! -f "$host/current/index.html" ]; then
  echo "drift: $host/current is missing"
  exit 2
fi
if ! cmp -s site/index.html "$host/current/index.html"; then
  echo "drift: $host/current/index.html differs from $DEPLOYLITE_VERSION"
  exit 2
fi
echo "in sync: $DEPLOYLITE_ENVIRONMENT serves $DEPLOYLITE_VERSION unchanged"
