#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# Next call (prepared at the end of session 4, not yet run): what the last commits changed without a GPU run -
# GraphedPrefill's piece refactor (capture=False / _Piece), the shared gpu_checks_test helper, GLA's graphed prefill
# with a conv (states compared by name) - then Mamba-2's e2e on whatever GPU this is (H100 numbers were missing).
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=$OUT/log.txt; cat /tmp/setup.txt > $L  # written as it goes: a call cut at 600 s still returns it
t() { local s=$1; shift; timeout $s python3 -m pytest -m gpu -q -p no:cacheprovider -rfE "$@" > /tmp/t.txt 2>&1;
      echo "$* rc=$? :: $(tail -1 /tmp/t.txt)" >> $L; grep -E "^(FAILED|ERROR)|Error|assert" /tmp/t.txt | head -20 >> $L; }
t 110 tests/test_cuda_graph_gpu.py -k prefill
t 90 tests/test_based.py
t 40 tests/test_ops_conv_triton.py tests/test_ops_norm_linear_triton.py
t 60 tests/test_pipeline.py
t 130 tests/test_gla_gpu.py -k "prefill_replays"
timeout 170 python3 -m jrt_prompt.bench e2e --models mamba2-370m --contexts 2048,32768 --batches 1,16,64 --no-hf \
  --json $OUT/e2e.json >> $L 2>&1
ls $OUT
