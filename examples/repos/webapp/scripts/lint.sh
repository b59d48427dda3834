#!/bin/sh
set -eu
if grep -n '[[:space:]]$' src/*; then
  echo "trailing whitespace found" >&2
  exit 1
fi
echo "lint clean"
