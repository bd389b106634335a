#!/usr/bin/env bash
# Run 7 of the recall training (issue 6): two runs at once on one GPU (NOTES.md, "Run 7"). Mamba-2 (init 0.02, as
# in run 6, where it learned to use a question read first, but only with "Question" as the sequence's first token)
# with a mixture that takes that cue away: question-first rows that start as the JRT prompt's second read does
# ("\n\nQuestion:"), answer-only distractor-JRT rows (D', Q, C, Q: a JRT prompt whose first copy is an unrelated
# document), phase-1 JRT rows on the question-first range (1-36 records), phase 2 earlier and on documents of 8-48
# records; and GLA with run 5's recipe and a second seed (seed 1), to confirm run 5's JRT gain. Both are scored with
# four prompts: plain, JRT (the target compares these two), (Q, C, Q) and "\n\n" + (Q, C, Q). Mamba (v1) is left
# out: its training scan is too slow for one call (NOTES.md). The GPU call, from the repository root (about 9
# minutes; the device allows 10):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run7.sh
#
# Writes the runs under $OUT/run7 (one folder per run, RESULTS.md), then packs them into at most three files and
# removes the folder (a call returns 8 files at most): $OUT/run7-results.tgz (results.json, train.log, configs,
# tokenizers, RESULTS.md), $OUT/run7-models.tgz.aa (+ .ab if needed: the weights in 15 MiB parts; join with cat),
# plus $OUT/RESULTS.md and $OUT/run7.log (gpu_launch.sh). No command stops the script.
#
# A CPU smoke run of the same recipe with tiny budgets (runs one after the other; the deadline covers all):
#   OUT=/tmp/smoke7 PYTHON=/work/venv/bin/python DEVICE=cpu WORKERS=0 PARALLEL= MINUTES=0.25 EVAL_MINUTES=0.15 \
#       DEADLINE_MINUTES=5 EVAL_RECORDS=2,4 EXTRA_ARGS="--tokens-per-batch 2048 --eval-documents 4 --log-every 5" \
#       bash examples/recall_training/gpu_run7.sh
set +e
ARCH=${ARCH:-mamba2,gla-seed1}
MINUTES=${MINUTES:-5.8}
EVAL_MINUTES=${EVAL_MINUTES:-1.3}   # four prompts per size (run 6: two prompts, 8 sizes, 1.2)
DEADLINE_MINUTES=${DEADLINE_MINUTES:-7.8}   # after the launch: stops any child still running, then the table
EVAL_RECORDS=${EVAL_RECORDS:-4,8,16,24,32,48}   # run 5's sizes: Mamba-2's plain prompt is 17-41% at 8-24 records

# Mamba-2 (the shared recipe). Phase 1: run 6's (run 1's curriculum, dense JRT rows with the second-copy loss, plain
# rows with one question), except: JRT rows on 1-36 records, as question-first rows (run 6: 1-18, so only
# question-first rows were past Mamba-2's plain recall where it learned to select); question-first rows led by
# "\n\nQuestion:" (run 6's began with "Question", the cue its skill keyed on); distractor-JRT rows (answer-only,
# 1-36 records). Phase 2 at half the time (run 6: by time at 65%, 337 steps): answer-only JRT, question-first and
# distractor-JRT rows of 8-48 records (past Mamba-2's plain recall: 37% at 8 test records, 17% at 24; run 6's
# 16-96 / 16-128 ran at 19-52k tokens/s), plain rows kept, no second-copy loss. --init-range 0.02 as in run 6 (it
# leaves GLA unchanged: bit-identical initial weights).
# GLA (variant gla-seed1): run 5's recipe option for option, with --seed 1 (run 5: seed 0).
RECIPE=(
  --mix plain=0.3,jrt=0.3,question_first=0.25,distractor_jrt=0.15
  --records plain=1-36,jrt=1-36,question_first=1-36,distractor_jrt=1-36
  --answer-only distractor_jrt --recall-weight 1.0 --plain-questions 1 --warmup 200
  --question-first-lead separator
  --start-level 0.056 --growth-rule hard-rows --record-sampling top-half --floor-from 0.45
  --phase2-from 0.5
  --phase2-mix plain=0.3,jrt=0.3,question_first=0.2,distractor_jrt=0.2
  --phase2-records plain=1-36,jrt=8-48,question_first=8-48,distractor_jrt=8-48
  --phase2-answer-only jrt,question_first,distractor_jrt --phase2-recall-weight 0
  --buckets 64,128,192,256,320,384,512,640,768,1024,1280,1536,2048,2560,3072
  --init-range 0.02
  --eval-modes default,jrt,question_first,question_first_sep
  --variant "gla-seed1=gla --seed 1 --mix plain=0.3,jrt=0.4,question_first=0.3
    --records plain=1-36,jrt=1-18,question_first=1-36 --answer-only none --question-first-lead question
    --phase2-when-acc 0.6 --phase2-from 0.65 --phase2-mix plain=0.3,jrt=0.3,question_first=0.4
    --phase2-records plain=1-36,jrt=8-48,question_first=8-64 --phase2-answer-only jrt,question_first"
)
. "$(dirname "${BASH_SOURCE[0]}")/gpu_launch.sh" run7 "${RECIPE[@]}"
