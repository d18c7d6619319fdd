#!/bin/sh
# Competition entry point: ./run_attack.sh INPUT_DIR OUTPUT_DIR MAX_EPSILON
# Writes an adversarial PNG of the same name, within MAX_EPSILON pixel levels, for every image in
# INPUT_DIR, with the attack described by config.json beside this script.
set -eu
if [ "$#" -ne 3 ]; then
  echo "usage: $0 INPUT_DIR OUTPUT_DIR MAX_EPSILON" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" -m hgd.cli.run_attack --config "$HERE/config.json" "$1" "$2" "$3"
