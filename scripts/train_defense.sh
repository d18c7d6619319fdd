#!/usr/bin/env bash
# The whole training recipe of the shipped defense (defense/weights/), as one resumable command:
# rerunning it goes on from the last finished step (pairs on disk, the last finished epoch).
#
#   scripts/train_defense.sh [WORK_DIR]        # default WORK_DIR: ~/hgd-work (keep it outside the checkout)
#
# 1. Table 1 training pairs from the ImageNet pool (attacks on Lite0 and Lite1; Lite2 stays unseen).
# 2. One DUNET (width 0.5) guided by the FGD losses of all three Lite models, trained on 128x128 crops,
#    checkpointed every 250 steps, at most 4.5 hours of training.
# 3. The checkpoint with the lowest validation loss becomes the defense's denoiser.
# Environment: POOL (clean labelled folder, default ../shared/datasets/imagenet_pool), PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$HOME/hgd-work}
POOL=${POOL:-$ROOT/../shared/datasets/imagenet_pool}
PY=${PYTHON:-python3}
RUN=$WORK/runs/fgd_lite_ensemble

"$PY" -m hgd.train data "$POOL" "$WORK/pairs" --no-progress
"$PY" -m hgd.train fit "$WORK/pairs" "$RUN" --guidance fgd \
  --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \
  --width 0.5 --crop 128 --batch-size 16 --steps-per-epoch 250 --max-epochs 60 --max-hours 4.5 --no-progress
mkdir -p "$ROOT/defense/weights"
install -m 644 "$RUN/best.weights.h5" "$ROOT/defense/weights/fgd_lite_ensemble.weights.h5"
echo "defense denoiser: $ROOT/defense/weights/fgd_lite_ensemble.weights.h5 (from $RUN)"
