#!/bin/sh
# Verifies a deployment: the live release is the version just deployed, and the page is there.
set -eu
host="${DEPLOY_ROOT:-/tmp/deploylite-example-hosts}/$DEPLOYLITE_ENVIRONMENT"
test "$(cat "$host/current/VERSION")" = "$DEPLOYLITE_VERSION"
grep -q '<h1>' "$host/current/index.html"
echo "smoke: $DEPLOYLITE_ENVIRONMENT serves $DEPLOYLITE_VERSION"
