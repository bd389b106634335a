#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# This call: the final check of the fused decode path (MAX_ROWS 1, 16K tiles, PDL): GPU tests, Mamba-2 e2e, profile.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
T0=$(date +%s); L=/tmp/log.txt; cat /tmp/setup.txt > $L
left() { echo $(( ${1:-540} - ($(date +%s) - T0) )); }
bash benchmarks/gpu_tests.sh 330 tests/test_ops_norm_triton.py tests/test_ops_norm_linear_triton.py \
  tests/test_ops_mamba2_step_triton.py tests/test_cuda_graph_gpu.py tests/test_mamba2.py tests/test_fla_mamba.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
timeout $(left 500) jrt-bench e2e --models mamba2-370m --contexts 2048 --batches 1,16,64 --no-hf \
  --json $OUT/e2e_mamba2.json > /tmp/e2e.txt 2>&1
timeout $(left 550) python3 benchmarks/prefill_profile.py --decode-only > /tmp/prof.txt 2>&1
for f in /tmp/e2e.txt /tmp/prof.txt $OUT/gpu_logs.txt; do echo "=========== $f"; cat $f; done >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
