#!/usr/bin/env bash
# One GPU call's GPU tests in priority order, each under the time left (the device allows 600 s a call and returns
# at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine;
# `FILES="tests/a.py tests/b.py" [SELECT="pytest -k expression"] bash benchmarks/gpu_call.sh` for other files.
# The fla-backed files spend nearly all their time compiling and autotuning fla's Triton kernels for each new shape
# (session 6, H100: test_fla_mamba 32 cases in 454 s; test_gla_gpu 8 cases in 440 s, cut; test_train_recall's GPU
# cases, no case finished in 90 s), one process using one of the 16 cores. So the cases run in XDIST_N worker
# processes (pytest-xdist is in the GPU image): the compiles run side by side.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=$OUT/log.txt; cat /tmp/setup.txt > $L  # written as it goes: a call cut at 600 s still returns it
N=(); python3 -c "import xdist" 2>/dev/null && N=(-n "${XDIST_N:-8}") || echo "pytest-xdist missing: one process" >> $L
t() { local s=$1; shift; timeout $s python3 -m pytest -m gpu -q "${N[@]}" -p no:cacheprovider -rfE "$@" > /tmp/t.txt 2>&1;
      echo "$* rc=$? :: $(tail -1 /tmp/t.txt)" >> $L; grep -E "^(FAILED|ERROR)|Error|assert" /tmp/t.txt | head -20 >> $L; }
K=(); [ -n "$SELECT" ] && K=(-k "$SELECT")  # e.g. SELECT="chunk_kernel and bf16": pytest -k over FILES
if [ -n "$FILES" ]; then t 540 "${K[@]}" $FILES; ls $OUT; exit 0; fi
t 360 tests/test_gla_gpu.py
t 180 tests/test_train_recall.py
ls $OUT
