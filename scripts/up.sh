#!/usr/bin/env bash
# Starts the whole platform on this machine with embedded defaults and runs a sample job:
#   scripts/up.sh [DATA_DIR]   (default: ./mpegflow-data)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -j2 -p mpegflow -p mpegflow-worker
exec target/release/mpegflow up --data-dir "${1:-mpegflow-data}"
