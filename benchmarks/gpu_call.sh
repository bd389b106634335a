#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# Session 5's second call: the GPU tests the first call cut short or failed (the pipeline with an Engine on
# transformers 5.17, fixed; the Triton conv and fused norm-linear files to the end), then the Based 1.3B
# end-to-end timings (not measured with graphed prefill yet) and the kernels table at N = 32768.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=$OUT/log.txt; cat /tmp/setup.txt > $L  # written as it goes: a call cut at 600 s still returns it
t() { local s=$1; shift; timeout $s python3 -m pytest -m gpu -q -p no:cacheprovider -rfE "$@" > /tmp/t.txt 2>&1;
      echo "$* rc=$? :: $(tail -1 /tmp/t.txt)" >> $L; grep -E "^(FAILED|ERROR)|Error|assert" /tmp/t.txt | head -20 >> $L; }
t 60 tests/test_pipeline.py
t 150 tests/test_ops_conv_triton.py tests/test_ops_norm_linear_triton.py
timeout 150 python3 -m jrt_prompt.bench e2e --models based-1.3b --contexts 2048,8192 --batches 1,16 --no-hf \
  --json $OUT/e2e.json >> $L 2>&1
timeout 150 python3 -m jrt_prompt.bench kernels --lengths 32768 --json $OUT/kernels.json >> $L 2>&1
ls $OUT
