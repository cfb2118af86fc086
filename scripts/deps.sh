#!/usr/bin/env bash
# Installs what MpegFlow needs at run time when it is missing (Debian): ffmpeg and PostgreSQL,
# strace for the FFmpeg oracle test (crates/domain/tests/it), fonts for subtitles, and for
# scripts/schemathesis.sh python3 with venv (Schemathesis comes from PyPI into a venv), curl, jq.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v strace >/dev/null || need+=(strace)
# Fonts for burnt-in subtitles (libass through fontconfig); the jail reads them.
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
