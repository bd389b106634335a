#!/usr/bin/env bash
# Run 8 of the recall training (issue 6): Mamba-2 alone on the GPU (NOTES.md, "Run 8"). Run 7's mixture (question-
# first rows led by the JRT prompt's "\n\nQuestion:", answer-only distractor-JRT rows (D', Q, C, Q), phase-1 JRT rows
# of 1-36 records) with run 6's phase-2 timing (65% of the budget: run 7 switched at 50%, 174 s, before its recall
# had left the plateau, and lost it: 28% at 4 test records against run 6's 66%), phase-2 rows of 8-48 records, and
# the whole GPU (run 7 shared it with GLA) for 6.8 minutes. Scored with four prompts: plain, JRT (the target),
# (Q, C, Q) and "\n\n" + (Q, C, Q). The GPU call, from the repository root (about 9.5 minutes; the device allows 10):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run8.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run8.log, $OUT/run8-results.tgz and $OUT/run8-models.tgz.aa (gpu_launch.sh).
set +e
ARCH=${ARCH:-mamba2}
MINUTES=${MINUTES:-6.8}
EVAL_MINUTES=${EVAL_MINUTES:-1.2}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-8.4}
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,48}
RECIPE=(
  --mix plain=0.3,jrt=0.3,question_first=0.25,distractor_jrt=0.15
  --records plain=1-36,jrt=1-36,question_first=1-36,distractor_jrt=1-36
  --answer-only distractor_jrt --recall-weight 1.0 --plain-questions 1 --warmup 200
  --question-first-lead separator
  --start-level 0.056 --growth-rule hard-rows --record-sampling top-half --floor-from 0.45
  --phase2-from 0.65
  --phase2-mix plain=0.3,jrt=0.3,question_first=0.2,distractor_jrt=0.2
  --phase2-records plain=1-36,jrt=8-48,question_first=8-48,distractor_jrt=8-48
  --phase2-answer-only jrt,question_first,distractor_jrt --phase2-recall-weight 0
  --buckets 64,128,192,256,320,384,512,640,768,1024,1280,1536,2048,2560,3072
  --init-range 0.02
  --eval-modes default,jrt,question_first,question_first_sep
)
RECIPE+=("${RECIPE_EXTRA[@]}")  # gpu_run9.sh: a --variant
. "$(dirname "${BASH_SOURCE[0]}")/gpu_launch.sh" "${RUN_NAME:-run8}" "${RECIPE[@]}"  # gpu_run9/10.sh: RUN_NAME
