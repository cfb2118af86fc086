#!/usr/bin/env bash
# Runs every test against real PostgreSQL (a private cluster the tests start, or DATABASE_URL),
# the embedded S3 endpoint, real gRPC/HTTP on loopback and real ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/check-worker-deps.sh
# The integration tests start worker processes from target/debug/mpegflow-worker.
cargo build -j2 --workspace --bins
# A Standard Webhooks library from another language checks a delivery (webhook_api.rs): the
# reference Python one, pinned, in a venv under target/.
venv=target/standardwebhooks-venv
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null)" != 1.1.0 ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==1.1.0"
fi
export MPEGFLOW_STANDARDWEBHOOKS_PYTHON=$PWD/$venv/bin/python
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# As root (as in CI) the root-only setups are promised: a test that would skip for want of root fails.
[ "$(id -u)" = 0 ] && export MPEGFLOW_REQUIRE_ROOT_SETUP=1
cargo test -j2 --workspace --lib --bins --tests 2>&1 | tee "$log" || status=$?
if [ $status = 0 ]; then scripts/check-security-claims.sh "$log" || status=1; fi
# The API contract: Schemathesis, every check, against a live `mpegflow up` on loopback.
scripts/schemathesis.sh || status=1
# One closing line for the whole run: cargo prints one per test binary, the last often "0 passed".
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
