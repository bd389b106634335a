#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# Writes $OUT/log.txt (everything printed) and $OUT/e2e_based_1_3b.json.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
T0=$(date +%s); L=/tmp/log.txt; cat /tmp/setup.txt > $L
left() { echo $(( ${1:-540} - ($(date +%s) - T0) )); }
bash benchmarks/gpu_tests.sh 400 tests/test_ops_based_triton.py tests/test_cuda_graph_gpu.py tests/test_based.py \
  tests/test_based_fla_gpu.py tests/test_ops_based.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
timeout $(left 540) jrt-bench e2e --models based-1.3b --contexts 2048,8192 --batches 1,16 --no-hf \
  --json $OUT/e2e_based_1_3b.json > /tmp/e2e.txt 2>&1
for f in /tmp/e2e.txt $OUT/gpu_logs.txt; do echo "=========== $f"; cat $f; done >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
