#!/bin/sh
# Test attack: writes its first image, then crashes with exit status 3.
in=$1 out=$2
first=$(ls "$in" | head -n 1)
cp "$in/$first" "$out/$first"
echo "crasher: something went badly wrong" >&2
exit 3
