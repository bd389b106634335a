#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# Writes $OUT/log.txt (everything printed), $OUT/kernels.json, $OUT/prefill_profile.json, $OUT/e2e_compile.json.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
T0=$(date +%s); L=/tmp/log.txt; cat /tmp/setup.txt > $L
left() { echo $(( ${1:-570} - ($(date +%s) - T0) )); }
timeout 60 python benchmarks/prefill_profile.py --models mamba2-370m > $OUT/prefill_profile.json 2>/tmp/pp.err
timeout 200 jrt-bench kernels --no-checks --json $OUT/kernels.json > /tmp/kernels.txt 2>&1
echo "elapsed before tests: $(( $(date +%s) - T0 ))" >> $L
bash benchmarks/gpu_tests.sh $(left 420) tests/test_ops_based_triton.py tests/test_mamba2.py tests/test_ops_ssm.py \
  tests/test_cuda_graph_gpu.py tests/test_based.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
timeout $(left 540) jrt-bench e2e --models mamba2-370m --contexts 2048 --batches 1 --no-hf --compile \
  --json $OUT/e2e_compile.json > /tmp/e2e.txt 2>&1
for f in /tmp/e2e.txt /tmp/pp.err /tmp/kernels.txt $OUT/gpu_logs.txt; do
  echo "=========== $f"; cat $f; done >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
