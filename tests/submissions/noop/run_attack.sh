#!/bin/sh
# Test attack: copies every input image unchanged. Logs the names it saw to $HGD_TEST_MARKER if set.
set -eu
in=$1 out=$2 eps=$3
if [ -n "${HGD_TEST_MARKER:-}" ]; then
  echo "noop eps=$eps $(ls "$in" | tr '\n' ' ')" >> "$HGD_TEST_MARKER"
fi
for f in "$in"/*.png; do cp "$f" "$out/"; done
