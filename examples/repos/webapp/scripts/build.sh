#!/bin/sh
# Bundles src/ into dist/ the way a real front-end build would, in miniature.
set -eu
mkdir -p dist
cat src/app.js > dist/bundle.js
sed "s/{{APP_NAME}}/${APP_NAME:-webapp}/" src/index.html > dist/index.html
echo "built dist/ for ${APP_NAME:-webapp} at commit ${DEPLOYLITE_COMMIT:-unknown}"
