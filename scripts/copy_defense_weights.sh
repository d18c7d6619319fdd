#!/usr/bin/env bash
# The defense-aware attacks carry copies of the defense (attacks/*/defense/): give them the denoiser
# weights defense/config.json reads, and only those (defense/weights/ also keeps the profiles'
# denoisers). Run by scripts/train_defense.sh and scripts/continue_training.sh after they install.
# Environment: PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WEIGHTS=$("$PY" -c 'import sys; from hgd.defenses.defended import load_config
print("\n".join(str(s.weights) for s in load_config(sys.argv[1]).denoisers()))' "$ROOT/defense/config.json")
for copy in "$ROOT"/attacks/*/defense; do
  mkdir -p "$copy/weights"
  while read -r weights; do
    if [ -f "$weights" ]; then cp -- "$weights" "$copy/weights/"; fi
  done <<< "$WEIGHTS"
done
