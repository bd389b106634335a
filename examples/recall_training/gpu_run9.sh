#!/usr/bin/env bash
# Run 9 of the recall training (issue 6): run 8's recipe (gpu_run8.sh; with it Mamba-2 met the JRT target, one
# seed) again, two runs at once: Mamba-2 with a second seed (seed 1), and Based d128 with the same recipe (runs 1-6
# gave Based no JRT effect with the "Question"-led question-first rows and no distractor rows). Scored with the
# four prompts of run 8 at run 5's sizes. The GPU call, from the repository root (about 9.5 minutes):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run9.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run9.log, $OUT/run9-results.tgz and $OUT/run9-models.tgz.aa (gpu_launch.sh).
# Run 8's recipe (gpu_run8.sh) as it is, plus the seed-1 variant; run 5's evaluation sizes.
EVAL_MINUTES=${EVAL_MINUTES:-1.3}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-8.5}
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,32,48}
RECIPE_EXTRA=(--variant "mamba2-seed1=mamba2 --seed 1")
ARCH=${ARCH:-mamba2-seed1,based} RUN_NAME=run9 . "$(dirname "${BASH_SOURCE[0]}")/gpu_run8.sh"
