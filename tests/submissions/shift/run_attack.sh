#!/bin/sh
# Test attack: adds 100 to every pixel value, far outside the eps box (the harness must clip it).
exec "${PYTHON:-python3}" "$(dirname "$0")/shift.py" "$@"
