#!/usr/bin/env bash
# Run 5 of the recall training (issue 6): Based, Mamba-2 and GLA at once on one GPU, the first run's curriculum
# (NOTES.md, "Run 5"). The GPU call, from the repository root (about 9 minutes; the device allows 10):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run5.sh
#
# Writes the runs under $OUT/run5 (one folder per architecture, RESULTS.md), then packs them into at most three
# files and removes the folder (a call returns 8 files at most): $OUT/run5-results.tgz (results.json, train.log,
# configs, tokenizers, RESULTS.md), $OUT/run5-models.tgz.aa (+ .ab if needed: the weights in 15 MiB parts; join with
# cat), plus $OUT/RESULTS.md and $OUT/run5.log (gpu_launch.sh). No command stops the script.
#
# A CPU smoke run of the same recipe with tiny budgets (architectures one after the other; the deadline covers all):
#   OUT=/tmp/smoke5 PYTHON=/work/venv/bin/python DEVICE=cpu WORKERS=0 PARALLEL= MINUTES=0.25 EVAL_MINUTES=0.15 \
#       DEADLINE_MINUTES=5 EVAL_RECORDS=2,4 EXTRA_ARGS="--tokens-per-batch 2048 --eval-documents 4 --log-every 5" \
#       bash examples/recall_training/gpu_run5.sh
set +e
ARCH=${ARCH:-based,mamba2,gla}   # Based first: the one that learned recall in the first run
MINUTES=${MINUTES:-5.8}
EVAL_MINUTES=${EVAL_MINUTES:-1.0}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-7.8}   # after the launch: stops any child still running, then the table

# Phase 1: the first GPU run's recipe, curriculum included: JRT rows supervised on every token with the second-copy
# loss (dense recall), full-loss plain (one question) and question-first rows; JRT documents 1-18 records, the others
# 1-36 (what the first run reached by its own accuracy); the level starts at one JRT record (1/18) and grows by half
# when rows of at least half the level's top size, from batches drawn since the last growth, are 80% right
# (hard-rows); half the batches from [top/2, top], half from [1, top]. Phase 2, once plain rows of 18-36 records
# are 60% right (at 65% of the time at the latest): answer-only question-first and JRT rows on documents up to
# 64 / 48 records, past what plain recall holds; plain rows kept; no second-copy loss.
RECIPE=(
  --mix plain=0.3,jrt=0.4,question_first=0.3 --records plain=1-36,jrt=1-18,question_first=1-36
  --answer-only none --recall-weight 1.0 --plain-questions 1 --warmup 200
  --start-level 0.056 --growth-rule hard-rows --record-sampling top-half --floor-from 0.45
  --phase2-when-acc 0.6 --phase2-from 0.65 --phase2-mix plain=0.3,jrt=0.3,question_first=0.4
  --phase2-records plain=1-36,jrt=8-48,question_first=8-64 --phase2-answer-only jrt,question_first
  --phase2-recall-weight 0
  --buckets 64,128,192,256,320,384,512,640,768,1024,1280,1536,2048,2560,3072
)
. "$(dirname "${BASH_SOURCE[0]}")/gpu_launch.sh" run5 "${RECIPE[@]}"
