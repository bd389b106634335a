#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# This call: the Mamba-2 prefill kernels (conv, SSD prep/skip), the graphed prefill, then where the time goes.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=/tmp/log.txt; cat /tmp/setup.txt > $L
bash benchmarks/gpu_tests.sh ${TEST_SECONDS:-330} tests/test_ops_conv_triton.py tests/test_ops_ssd_triton.py \
  tests/test_cuda_graph_gpu.py tests/test_mamba2.py tests/test_based.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
timeout 100 python3 benchmarks/prefill_profile.py --models mamba2-370m --tokens 2048 > $OUT/prefill_profile.json 2>> $L
timeout 120 python3 -m jrt_prompt.bench e2e --models mamba2-370m --contexts 2048,8192 --batches 1 --no-hf \
  --json $OUT/e2e.json >> $L 2>&1
echo "=========== logs" >> $L; cat $OUT/gpu_logs.txt >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
