#!/usr/bin/env bash
# One GPU call's checks in priority order, each under the time left (the device allows 600 s a call and returns at
# most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# Prepared at the end of session 5 for the next one: what was never GPU-run - the blocked Mamba training scan
# (tests/test_train_recall.py's GPU cases, before run 10 relies on it) - then tests/test_gla_gpu.py to the end (it
# passed every case it reached in three calls but was always cut by fla's autotuning on a fresh machine).
# tests/test_fla_mamba.py needs a call of its own (`FILES=tests/test_fla_mamba.py bash benchmarks/gpu_call.sh`).
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=$OUT/log.txt; cat /tmp/setup.txt > $L  # written as it goes: a call cut at 600 s still returns it
t() { local s=$1; shift; timeout $s python3 -m pytest -m gpu -q -p no:cacheprovider -rfE "$@" > /tmp/t.txt 2>&1;
      echo "$* rc=$? :: $(tail -1 /tmp/t.txt)" >> $L; grep -E "^(FAILED|ERROR)|Error|assert" /tmp/t.txt | head -20 >> $L; }
if [ -n "$FILES" ]; then t 540 $FILES; ls $OUT; exit 0; fi
t 90 tests/test_train_recall.py
t 440 tests/test_gla_gpu.py
ls $OUT
