#!/usr/bin/env bash
# Run 14 of the recall training (issue 6): run 11 (Mamba alone, run 8's recipe at init 0.1, the cumsum training
# scan) with a second seed, as GLA and Mamba-2 each met the JRT target on two seeds and Mamba so far on one (run 11:
# +44.5 to +69.5 points at 4-48 records). NOTES.md, "Run 14". The GPU call, from the repository root (about 9.5
# minutes):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run14.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run14.log, $OUT/run14-results.tgz and $OUT/run14-models.tgz.aa (gpu_launch.sh).
RECIPE_EXTRA=(--init-range 0.1 --seed 1)  # after run 8's 0.02: the last one given wins
ARCH=${ARCH:-mamba} RUN_NAME=run14 . "$(dirname "${BASH_SOURCE[0]}")/gpu_run8.sh"
