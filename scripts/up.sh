#!/usr/bin/env bash
# Starts the whole platform on this machine with embedded defaults and runs a sample job:
#   scripts/up.sh [DATA_DIR [UP_OPTIONS...]]
# DATA_DIR (default: ./mpegflow-data) is taken relative to the directory you run this from,
# not the checkout; UP_OPTIONS go to `mpegflow up` (see `mpegflow up --help`).
set -euo pipefail
data_dir="$(realpath -m -- "${1:-mpegflow-data}")"
if [ $# -gt 0 ]; then shift; fi
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -j2 -p mpegflow -p mpegflow-worker -p mpegflow-dispatcher
exec target/release/mpegflow up --data-dir "$data_dir" "$@"
