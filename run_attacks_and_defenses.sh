#!/bin/sh
# Runs attack submissions against defense submissions the way the NIPS 2017 competition did, and scores them.
# With no arguments: a tour (three attacks against defense/ and baselines/undefended) on sample_data/ into
# ./competition-output/; --all: every oblivious attack of attacks/ against defense/ and every baselines/*/.
# Options: ./run_attacks_and_defenses.sh --help   Check one submission: ./run_attacks_and_defenses.sh validate PATH
HGD_RUNNER_PROG="${HGD_RUNNER_PROG:-$0}"
export HGD_RUNNER_PROG
exec "${PYTHON:-python3}" -m hgd.cli.runner "$@"
