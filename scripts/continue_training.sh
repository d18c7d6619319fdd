#!/usr/bin/env bash
# More chunks of the shipped denoiser's training, from the weights committed in defense/weights/:
#
#   scripts/continue_training.sh HOURS [WORK_DIR]     # default WORK_DIR: ~/hgd-work (outside the checkout)
#
# Each chunk rebuilds its training pairs if WORK_DIR lacks them (seeded: the same on every machine; the
# recipe's pair_slices 3 build a third of the competition set per chunk, the whole set took 1 h 21 min
# on two cores), trains with the 'continue' options of defense/config.json's recipe until its
# validation score plateaus (checkpointed every epoch; rerun the same command after a kill to resume the
# chunk), installs its best checkpoint if it beats the committed weights by the recipe's selection (the
# ensemble's labels on the pool's validation pairs, the loss breaking ties), and
# appends itself to docs/results/training/NAME.csv (+ NAME.png). The next chunk (up to CHUNKS, on the
# next pair slice) then goes on from what it installed while HOURS, counted in wall time from the start,
# still holds the last chunk's start-up and longest epoch; no epoch starts that would pass HOURS (the
# first chunk's start-up and first epoch come on top). Commit defense/weights/ and docs/results/training/
# afterwards: that is all the next machine needs to go on.
# Run it at the lowest priority beside other work: nice -n 19 scripts/continue_training.sh 2
# Environment: POOL (clean labelled folder, default ../shared/datasets/imagenet_pool); PYTHON; CHUNKS
# (default 3: one pass over the pair slices).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOURS=${1:?usage: scripts/continue_training.sh HOURS [WORK_DIR]}
WORK=${2:-$HOME/hgd-work}
POOL=${POOL:-$ROOT/../shared/datasets/imagenet_pool}
PY=${PYTHON:-python3}
CONFIG=$ROOT/defense/config.json

"$PY" -m hgd.cli.train continue "$CONFIG" "$POOL" "$WORK" --max-hours "$HOURS" --chunks "${CHUNKS:-3}" \
    --history-dir "$ROOT/docs/results/training" --no-progress
