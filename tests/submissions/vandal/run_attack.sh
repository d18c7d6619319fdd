#!/bin/sh
# Test attack: copies its inputs, then tries to delete them and to leave state in its own folder.
# Logs whether it found state from an earlier run (it must not: each run gets a fresh copy).
in=$1 out=$2
for f in "$in"/*.png; do cp "$f" "$out/"; done
count=$(ls "$in" | wc -l)
if [ -e state.txt ]; then state=found; else state=fresh; fi
echo "I was here" >> state.txt
rm -f "$in"/* 2>/dev/null
echo garbage > "$in/IMG000000.png" 2>/dev/null
if [ -n "${HGD_TEST_MARKER:-}" ]; then echo "vandal inputs=$count state=$state" >> "$HGD_TEST_MARKER"; fi
exit 0
