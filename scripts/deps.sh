#!/usr/bin/env bash
# Installs what MpegFlow needs at run time when it is missing (Debian): ffmpeg and PostgreSQL,
# strace for the FFmpeg oracle test (crates/domain/tests/it), and fonts for subtitles.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v strace >/dev/null || need+=(strace)
# Fonts for burnt-in subtitles (libass through fontconfig); the jail reads them.
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
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
