#!/usr/bin/env bash
# The whole training recipe of a defense, as one resumable command: rerunning it goes on from the
# last finished step (pairs on disk, the last finished epoch of each denoiser).
#
#   scripts/train_defense.sh [WORK_DIR]        # default WORK_DIR: ~/hgd-work (keep it outside the checkout)
#
# Trains what defense/config.json runs, by its "training" section (hgd/train/recipe.py):
# 1. Table 1 training pairs from the ImageNet pool, attacked on the recipe's attack models
#    (the shipped defense: 2 of the 8 attacks per image, on Lite0 and Lite1; Lite2 stays unseen).
# 2. Every denoiser of the configuration (the shipped defense: one width-0.5 DUNET, first 3 epochs of
#    100 steps of the pixel loss on 128x128 crops (its warm_start, runs/NAME_warm_start), then 4 of
#    the FGD losses of Lite0+1+2 on crops, then 3 more of FGD on whole images (its fine_tune,
#    runs/NAME_fine_tune); checkpointed every epoch; ~2.5 h of training on one core).
# 3. Each checkpoint with the lowest validation loss goes where the configuration reads it
#    (defense/weights/) (the defense-aware attacks read them from there).
# Environment: HGD_DEFENSE_PROFILE=NAME trains defense/profiles/NAME.json instead (e.g. competition4,
# see docs/guide/competition-models.md); POOL (clean labelled folder, default ../shared/datasets/imagenet_pool); PYTHON.
set -euo pipefail
shopt -s nullglob
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$HOME/hgd-work}
POOL=${POOL:-$ROOT/../shared/datasets/imagenet_pool}
PY=${PYTHON:-python3}
CONFIG=$ROOT/defense/config.json
if [ -n "${HGD_DEFENSE_PROFILE:-}" ]; then
  CONFIG=$ROOT/defense/profiles/$HGD_DEFENSE_PROFILE.json
fi

"$PY" -m hgd.cli.train defense "$CONFIG" "$POOL" "$WORK" --no-progress
