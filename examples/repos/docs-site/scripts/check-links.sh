#!/bin/sh
# Every relative link in the docs must name a file that exists.
set -eu
status=0
for link in $(grep -oh '](\([^)]*\.md\))' docs/*.md | sed 's/](\(.*\))/\1/'); do
  if [ ! -f "docs/$link" ]; then
    echo "broken link: $link" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "all links resolve"
exit "$status"
