#!/usr/bin/env bash
# Run 4 of the recall training (issue 6): all five architectures at once on one GPU, two phases (NOTES.md, "Run 4").
# The GPU call, from the repository root (about 9 minutes; the device allows 10):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run4.sh
#
# Writes the runs under $OUT/run4 (one folder per architecture, RESULTS.md), then packs them into at most three
# files and removes the folder (a call returns 8 files at most): $OUT/run4-results.tgz (results.json, train.log,
# configs, tokenizers, RESULTS.md), $OUT/run4-models.tgz.aa (+ .ab: the weights in 15 MiB parts; join with cat),
# plus $OUT/RESULTS.md and $OUT/run4.log (gpu_launch.sh). No command stops the script.
#
# A CPU smoke run of the same recipe with tiny budgets (architectures one after the other; the deadline covers all):
#   OUT=/tmp/smoke PYTHON=/work/venv/bin/python DEVICE=cpu WORKERS=0 PARALLEL= MINUTES=0.3 EVAL_MINUTES=0.2 \
#       DEADLINE_MINUTES=8 EVAL_RECORDS=2,4 EXTRA_ARGS="--tokens-per-batch 2048 --eval-documents 4 --log-every 5" \
#       bash examples/recall_training/gpu_run4.sh
set +e
ARCH=${ARCH:-all}
MINUTES=${MINUTES:-5.5}
EVAL_MINUTES=${EVAL_MINUTES:-1.2}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-7.8}   # after the launch: stops any child still running, then the table

# Phase 1 (first 40% of the time): the first GPU run's recipe, which learned recall fastest: JRT rows supervised on
# every token with the second-copy loss (dense recall), full-loss plain and question-first rows, curriculum from one
# record. Phase 2: answer-only question-first and JRT rows on documents up to 48 / 40 records, where plain recall
# fails, plain rows kept (recall itself), no second-copy loss.
RECIPE=(
  --mix plain=0.3,jrt=0.4,question_first=0.3 --records plain=1-32,jrt=1-16,question_first=1-32
  --answer-only none --recall-weight 1.0 --plain-questions 4 --start-level 0.03 --floor-from 0.4 --warmup 100
  --phase2-from 0.4 --phase2-mix plain=0.3,jrt=0.3,question_first=0.4
  --phase2-records plain=1-32,jrt=4-40,question_first=4-48 --phase2-answer-only jrt,question_first
  --phase2-recall-weight 0
  --buckets 64,128,192,256,320,384,512,640,768,1024,1280,1536,2048,2560,3072
)
. "$(dirname "${BASH_SOURCE[0]}")/gpu_launch.sh" run4 "${RECIPE[@]}"
