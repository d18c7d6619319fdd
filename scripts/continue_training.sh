#!/usr/bin/env bash
# One more chunk of the shipped denoiser's training, from the weights committed in defense/weights/:
#
#   scripts/continue_training.sh HOURS [WORK_DIR]     # default WORK_DIR: ~/hgd-work (outside the checkout)
#
# Rebuilds the chunk's training pairs if WORK_DIR lacks them (seeded: the same on every machine; the
# recipe's pair_slices 3 build a third of the competition set per chunk, the whole set took 1 h 21 min
# on two cores),
# trains at most HOURS with the 'continue' options of defense/config.json's recipe (checkpointed
# every epoch; rerun the same command after a kill to resume the chunk), installs the
# chunk's best checkpoint if its validation loss beats the committed weights', and appends the chunk to
# docs/results/training/NAME.csv (+ NAME.png). Commit defense/weights/ and docs/results/training/
# afterwards: that is all the next machine needs to go on.
# Run it at the lowest priority beside other work: nice -n 19 scripts/continue_training.sh 2
# Environment: POOL (clean labelled folder, default ../shared/datasets/imagenet_pool); PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOURS=${1:?usage: scripts/continue_training.sh HOURS [WORK_DIR]}
WORK=${2:-$HOME/hgd-work}
POOL=${POOL:-$ROOT/../shared/datasets/imagenet_pool}
PY=${PYTHON:-python3}
CONFIG=$ROOT/defense/config.json

"$PY" -m hgd.cli.train continue "$CONFIG" "$POOL" "$WORK" --max-hours "$HOURS" \
    --history-dir "$ROOT/docs/results/training" --no-progress
