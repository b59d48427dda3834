#!/bin/sh
set -eu
mkdir -p dist/release
tar -cf "dist/release/${APP_NAME}-${DEPLOYLITE_COMMIT:-dev}.tar" -C dist index.html bundle.js
ls -l dist/release
