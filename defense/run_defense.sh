#!/bin/sh
# Competition entry point: ./run_defense.sh INPUT_DIR OUTPUT_FILE
# Classifies every file in INPUT_DIR with the defense described by config.json
# beside this script and writes "filename,label" lines (labels 1..1000).
# HGD_DEFENSE_PROFILE=NAME runs profiles/NAME.json instead (e.g. competition4: the NIPS 2017
# four-model ensemble, each classifier behind its own full-width FGD denoiser).
set -eu
if [ "$#" -ne 2 ]; then
  echo "usage: $0 INPUT_DIR OUTPUT_FILE" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG="$HERE/config.json"
if [ -n "${HGD_DEFENSE_PROFILE:-}" ]; then
  CONFIG="$HERE/profiles/$HGD_DEFENSE_PROFILE.json"
  case "$HGD_DEFENSE_PROFILE" in
    */*|.*) CONFIG="" ;;
  esac
  if [ -z "$CONFIG" ] || [ ! -f "$CONFIG" ]; then
    echo "ERROR: HGD_DEFENSE_PROFILE=$HGD_DEFENSE_PROFILE names no profile; known:" \
      $(cd "$HERE/profiles" && ls -- *.json 2>/dev/null | sed 's/\.json$//') >&2
    exit 2
  fi
fi
exec "${PYTHON:-python3}" -m hgd.cli.run_defense --config "$CONFIG" "$1" "$2"
