#!/bin/sh
# Test defense: a malformed result.csv: a header, rows without an integer label, a name that was not
# given, and labels (5) for only the first half of the files.
in=$1 out=$2
total=$(ls "$in" | wc -l)
half=$((total / 2))
{
  echo "filename,label"
  echo "only-a-name"
  echo "IMG000000.png,not-a-number"
  echo "ghost.png,5"
  ls "$in" | head -n "$half" | sed 's/$/,5/'
} > "$out"
