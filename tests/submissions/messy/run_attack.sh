#!/bin/sh
# Test attack with broken outputs (see messy.py).
exec "${PYTHON:-python3}" "$(dirname "$0")/messy.py" "$@"
