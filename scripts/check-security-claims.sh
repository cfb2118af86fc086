#!/usr/bin/env bash
# Every test that docs/SECURITY.md names as showing a claim must have run and passed in this test
# run: a claim whose test is missing, renamed, ignored or failed fails CI.
# Usage: scripts/check-security-claims.sh CARGO_TEST_LOG
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: $0 CARGO_TEST_LOG}
# Test names are written in backticks in the "Shown by" column of the claims tables: a Rust
# path such as `jail::every_escape_is_blocked_for_a_root_worker`.
names=$(grep -E '^\|' docs/SECURITY.md \
  | grep -oE '`[a-z0-9_]+(::[a-z0-9_]+)+`' | tr -d '`' | sort -u)
[ -n "$names" ] || { echo "check-security-claims: docs/SECURITY.md names no test" >&2; exit 1; }
missing=0
count=0
while IFS= read -r name; do
  count=$((count + 1))
  if ! grep -qE "^test (.*::)?${name} \.\.\. ok\$" "$log"; then
    echo "check-security-claims: SECURITY.md names \`$name\`, which did not run and pass" >&2
    missing=$((missing + 1))
  fi
done <<< "$names"
if [ "$missing" -gt 0 ]; then
  echo "check-security-claims: $missing of $count named tests missing, ignored or failed" >&2
  exit 1
fi
echo "check-security-claims: all $count tests named in docs/SECURITY.md ran and passed"
