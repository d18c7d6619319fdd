#!/bin/sh
# Test defense: crashes before writing anything.
echo "crasher_defense: cannot load my model" >&2
exit 1
