#!/bin/sh
set -eu
suite=${1:-unit}
echo "running $suite tests"
grep -q "function greet" dist/bundle.js
grep -q "<title>${APP_NAME:-webapp}</title>" dist/index.html
echo "$suite tests passed"
