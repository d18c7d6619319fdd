#!/bin/sh
# Test attack: waits HGD_TEST_PATIENCE seconds (default 2), then copies every input image unchanged, so a
# test can act while it runs (remove a cluster node under it, kill the driver).
set -eu
in=$1 out=$2
sleep "${HGD_TEST_PATIENCE:-2}"
for f in "$in"/*.png; do cp "$f" "$out/"; done
