#!/bin/sh
# Turns docs/*.md into a single HTML page (headings only: enough to show the pipeline running).
set -eu
mkdir -p public
{
  echo "<html><body>"
  for f in docs/*.md; do
    sed -n 's/^# \(.*\)/<h1>\1<\/h1>/p; s/^## \(.*\)/<h2>\1<\/h2>/p' "$f"
  done
  echo "</body></html>"
} > public/index.html
echo "built public/index.html from $(ls docs/*.md | wc -l) page(s)"
