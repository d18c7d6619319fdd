#!/bin/sh
# Test targeted attack: steers the pixel defense to the target class (see pixel_target.py).
exec "${PYTHON:-python3}" "$(dirname "$0")/pixel_target.py" "$@"
