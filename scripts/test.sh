#!/usr/bin/env bash
# Runs every test against real PostgreSQL (a private cluster the tests start, or DATABASE_URL),
# the embedded S3 endpoint, real gRPC/HTTP on loopback and real ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/check-worker-deps.sh
# The integration tests start worker processes from target/debug/mpegflow-worker.
cargo build -j2 --workspace --bins
cargo test -j2 --workspace
