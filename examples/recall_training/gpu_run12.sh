#!/usr/bin/env bash
# Run 12 of the recall training (issue 6): Based d128 with run 8's recipe at init 0.1, two seeds at once. Run 11
# (Mamba, run 8's recipe) went from no recall at init 0.02 (run 10) to the JRT target at every size at init 0.1: its
# plain recall stayed low (27% at 4 records) while its JRT rows learned to select. Based at 0.02 (run 9, the same
# recipe) learned plain recall (95% at 4 records) and never selected (JRT = plain within 0.5 points). This run asks
# whether the init scale does for Based what it did for Mamba. Two seeds (0 and 1) share the GPU as run 9's two
# runs did. NOTES.md, "Run 12". The GPU call, from the repository root (about 9.5 minutes):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run12.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run12.log, $OUT/run12-results.tgz and $OUT/run12-models.tgz.aa (gpu_launch.sh).
EVAL_MINUTES=${EVAL_MINUTES:-1.3}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-8.5}
RECIPE_EXTRA=(--init-range 0.1 --variant "based-seed1=based --seed 1")  # after run 8's 0.02: the last one wins
ARCH=${ARCH:-based,based-seed1} RUN_NAME=run12 . "$(dirname "${BASH_SOURCE[0]}")/gpu_run8.sh"
