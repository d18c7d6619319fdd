#!/bin/sh
# Test defense: labels every file 1.
in=$1 out=$2
for f in "$in"/*; do echo "$(basename "$f"),1"; done > "$out"
