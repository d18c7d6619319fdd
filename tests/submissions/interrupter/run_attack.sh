#!/bin/sh
# Test attack: copies its inputs; on the batch holding IMG000002.png it sends SIGINT (Ctrl-C), or the
# signal named by $HGD_TEST_SIGNAL, to the runner that started it, unless $HGD_TEST_NO_INTERRUPT is set.
# Logs each run to $HGD_TEST_MARKER.
in=$1 out=$2
for f in "$in"/*.png; do cp "$f" "$out/"; done
if [ -n "${HGD_TEST_MARKER:-}" ]; then echo "interrupter $(ls "$in" | tr '\n' ' ')" >> "$HGD_TEST_MARKER"; fi
if [ -e "$in/IMG000002.png" ] && [ -z "${HGD_TEST_NO_INTERRUPT:-}" ]; then
  kill -"${HGD_TEST_SIGNAL:-INT}" "$PPID"
  sleep 30
fi
exit 0
