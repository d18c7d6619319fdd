#!/bin/sh
# Competition entry point: ./run_defense.sh INPUT_DIR OUTPUT_FILE
# Classifies every file in INPUT_DIR with the defense described by config.json
# beside this script and writes "filename,label" lines (labels 1..1000).
set -eu
if [ "$#" -ne 2 ]; then
  echo "usage: $0 INPUT_DIR OUTPUT_FILE" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" -m hgd.cli.run_defense --config "$HERE/config.json" "$1" "$2"
