#!/usr/bin/env bash
# The strict broker as a property of the build: the worker links no database driver and no S3
# signing or credential code. Fails if `cargo tree` finds any.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(sqlx[a-z-]*|tokio-postgres|postgres|diesel[a-z-]*|sea-orm|aws-sigv4|aws-sdk-s3|aws-credential-types|rusty-s3|rust-s3|object_store|s3s[a-z-]*) '
found=$(cargo tree -p mpegflow-worker -e normal --prefix none | grep -oE "$forbidden" | sort -u || true)
if [ -n "$found" ]; then
  echo "mpegflow-worker depends on forbidden crates: $found" >&2
  exit 1
fi
# Prove the check can fail: the control plane does link them.
cargo tree -p mpegflow-control -e normal --prefix none | grep -qE '^sqlx ' || { echo "check is broken: sqlx not seen in mpegflow-control" >&2; exit 1; }
# The webhook dispatcher (open egress, hostile responses) links no S3 signing or credential code.
s3='^(aws-sigv4|aws-sdk-s3|aws-credential-types|rusty-s3|rust-s3|object_store|s3s[a-z-]*|mpegflow-objstore) '
found=$(cargo tree -p mpegflow-dispatcher -e normal --prefix none | grep -oE "$s3" | sort -u || true)
if [ -n "$found" ]; then
  echo "mpegflow-dispatcher depends on forbidden crates: $found" >&2
  exit 1
fi
echo "worker dependency check: no database driver, no S3 signing code (dispatcher: no S3 signing code)"
