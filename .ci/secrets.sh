#!/usr/bin/env bash
# Fails when a tracked file holds a credential in a format DeployLite issues: runner credentials
# (`dlr_` + 64 hex digits, from `POST /api/v1/runners/register`) and API tokens (`dlt_` + 64 hex).
# Tests that need such a string build it at run time; a literal one in the repository is a leak.
# Run it alone (`.ci/secrets.sh`) or through .ci/run. Matches are shown with the secret masked.
set -euo pipefail
cd "$(dirname "$0")/.."

pattern='dl[rt]_[0-9a-f]{64}'
# -I skips binary files; exit status 1 means "no match", anything above is an error.
set +e
found=$(git grep -nIE "$pattern" -- .)
status=$?
set -e
if [ "$status" -eq 1 ]; then
  echo "no DeployLite credentials in tracked files"
  exit 0
fi
if [ "$status" -ne 0 ]; then
  echo "error: git grep failed ($status)" >&2
  exit "$status"
fi
echo "error: tracked files hold DeployLite credentials (dlr_/dlt_ + 64 hex digits):" >&2
printf '%s\n' "$found" | sed -E 's/(dl[rt]_)[0-9a-f]{64}/\1<redacted>/g' >&2
echo "remove them (and revoke them: they are in the history), and ignore *.credential files" >&2
exit 1
