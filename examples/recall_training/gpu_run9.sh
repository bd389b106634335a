#!/usr/bin/env bash
# Run 9 of the recall training (issue 6): run 8's recipe (gpu_run8.sh; with it Mamba-2 met the JRT target, one
# seed) again, two runs at once: Mamba-2 with a second seed (seed 1), and Based d128 with the same recipe (runs 1-6
# gave Based no JRT effect with the "Question"-led question-first rows and no distractor rows). Scored with the
# four prompts of run 8 at run 5's sizes. The GPU call, from the repository root (about 9.5 minutes):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run9.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run9.log, $OUT/run9-results.tgz and $OUT/run9-models.tgz.aa (gpu_launch.sh).
set +e
ARCH=${ARCH:-mamba2-seed1,based}
MINUTES=${MINUTES:-6.8}
EVAL_MINUTES=${EVAL_MINUTES:-1.3}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-8.5}
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,32,48}
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
  --variant "mamba2-seed1=mamba2 --seed 1"
)
. "$(dirname "${BASH_SOURCE[0]}")/gpu_launch.sh" run9 "${RECIPE[@]}"
