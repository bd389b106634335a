#!/usr/bin/env bash
# Run 10 of the recall training (issue 6), prepared in session 5, not yet run: Mamba (v1) alone on the GPU with
# run 8's recipe, exactly (gpu_run8.sh; with it Mamba-2 met the JRT target on two seeds, runs 8 and 9), including
# --init-range 0.02 (Mamba-2 learned recall only from 0.02; transformers' Mamba default is 0.1), and Mamba's new
# training scan (`selective_scan_blocks`, the default with --train-ops reference: a few dozen launches a layer where
# runs 3-4's two-level scan walked about 2 sqrt(L) sequential steps and trained at 7-21k tokens/s; its GPU speed and
# memory are not measured yet: the first log lines' tokens/s say it). NOTES.md, "Run 10". The GPU call, from the
# repository root (about 9.5 minutes):
#
#   source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; bash examples/recall_training/gpu_run10.sh
#
# Leaves $OUT/RESULTS.md, $OUT/run10.log, $OUT/run10-results.tgz and $OUT/run10-models.tgz.aa (gpu_launch.sh).
RECIPE_EXTRA=(--mamba-scan blocks)  # the default when it ran (session 6); the default is now "cumsum" (run 11)
ARCH=${ARCH:-mamba} RUN_NAME=run10 . "$(dirname "${BASH_SOURCE[0]}")/gpu_run8.sh"
