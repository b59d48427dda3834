#!/bin/sh
# Deploys (or rolls back to) $DEPLOYLITE_VERSION on the "host" of $DEPLOYLITE_ENVIRONMENT: a
# directory standing in for a server. Each version is a release directory; `current` points at
# the live one, switched atomically (a symlink rename), so a failed deploy leaves the old one.
set -eu
host="${DEPLOY_ROOT:-/tmp/deploylite-example-hosts}/$DEPLOYLITE_ENVIRONMENT"
release="$host/releases/$DEPLOYLITE_VERSION"
mkdir -p "$host/releases"
rm -rf "$release.tmp"
cp -R site "$release.tmp"
printf '%s\n' "$DEPLOYLITE_VERSION" > "$release.tmp/VERSION"
rm -rf "$release"
mv "$release.tmp" "$release"
ln -sfn "$release" "$host/current.tmp"
mv -T "$host/current.tmp" "$host/current"
echo "$DEPLOYLITE_ACTION: $DEPLOYLITE_ENVIRONMENT now serves $DEPLOYLITE_VERSION (was ${DEPLOYLITE_PREVIOUS_VERSION:-nothing})"
