#!/usr/bin/env bash
# The measurements taken after every chunk of the shipped denoiser's training, the same each time
# (docs/results/training.md prints what they gave):
#
#   scripts/measure_shipped.sh [WORK_DIR]       # default WORK_DIR: ~/hgd-work (outside the checkout)
#
# 1. The competition harness at EVAL's eps cycle (4/8/12/16) on the DEV images: every shipped
#    oblivious attack (the transfer attacks included) against defense/ and every baseline (--all).
#    Attack pieces already in WORK_DIR/harness are reused (--keep-attacks), so a new denoiser is scored
#    on the same adversarial images; the runner runs one piece at a time, so each attack batch has the
#    machine to itself for its time limit. Stopped midway (kill, the end of a machine's time), it resumes
#    from its finished pieces when run again. Normalized scores and per-attack counts: WORK_DIR/harness/report.md.
# 2. bench/defense_run.py --trained: wall time of a 100-image run of defense/ with start-up, peak memory.
# 3. With TABLE3=1: the Table 3 analog (oblivious White/Black test sets on Lite0, eps 4 and 16; Lite2 is
#    the black-box model) for the shipped denoiser in front of Lite0, beside undefended Lite0, as the
#    paper-table rows are scored, into WORK_DIR/table3.json (rows already there are kept: delete the
#    "HGD shipped" row to rescore new weights).
# Environment: DEV (competition-format folder, default ../shared/datasets/nips17_dev), PYTHON, TIME_LIMIT
# (seconds per batch, default EVAL's 500: on a CPU where the 20-step targeted attack needs more, raise it
# rather than let that attack's batches stop half-written and leave the defense score).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$HOME/hgd-work}
DEV=${DEV:-$ROOT/../shared/datasets/nips17_dev}
PY=${PYTHON:-python3}
export PYTHON=$PY
cd "$ROOT"

./run_attacks_and_defenses.sh --all --keep-attacks --dataset-dir "$DEV" --output-dir "$WORK/harness" --eps cycle \
    --time-limit "${TIME_LIMIT:-500}" --no-progress

"$PY" bench/defense_run.py --images "$DEV/images" --trained

if [ "${TABLE3:-0}" = 1 ]; then
  "$PY" -m hgd.cli.experiments testsets "$DEV" "$WORK/testsets" --no-progress
  "$PY" -m hgd.cli.experiments evaluate "$WORK/testsets" --row NA=none --row "HGD shipped=defense/config.json" \
      --json "$WORK/table3.json" --no-progress
fi
