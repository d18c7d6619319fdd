#!/bin/sh
# Test attack: writes the first half of its outputs, then sleeps far past any test's time limit.
in=$1 out=$2
total=$(ls "$in"/*.png | wc -l)
half=$((total / 2))
for f in $(ls "$in"/*.png | head -n "$half"); do cp "$f" "$out/"; done
sleep 600
for f in "$in"/*.png; do cp "$f" "$out/"; done
