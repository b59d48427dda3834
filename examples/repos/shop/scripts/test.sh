#!/bin/sh
# The shop's tests: the page must have a title.
set -eu
grep -q '<title>' site/index.html
echo "site/index.html has a title"
