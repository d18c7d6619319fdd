#!/bin/sh
# Test defense: label = 2 + red value of pixel (0, 0) (see pixel.py).
exec "${PYTHON:-python3}" "$(dirname "$0")/pixel.py" "$@"
