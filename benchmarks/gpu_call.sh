#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# This call: the fused decode kernels (norm + projection, one-launch SSD step, PDL): tests, kernel sweep over 48
# layers' weights, e2e decode with PDL on and off, the decode profile.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
T0=$(date +%s); L=/tmp/log.txt; cat /tmp/setup.txt > $L
left() { echo $(( ${1:-540} - ($(date +%s) - T0) )); }
python3 -c "from triton.backends.nvidia.compiler import CUDAOptions as O; import triton.language.extra.cuda as c; print('launch_pdl' in O.__dataclass_fields__, hasattr(c, 'gdc_wait'))" >> $L 2>&1
bash benchmarks/gpu_tests.sh 200 tests/test_ops_norm_linear_triton.py tests/test_ops_mamba2_step_triton.py \
  tests/test_cuda_graph_gpu.py tests/test_ops_norm_triton.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
timeout $(left 330) python3 benchmarks/decode_kernels.py --rows 1 --json $OUT/decode_kernels.json > /tmp/dk.txt 2>&1
timeout $(left 430) jrt-bench e2e --models mamba2-370m --contexts 2048 --batches 1,16,64 --no-hf \
  --json $OUT/e2e_mamba2.json > /tmp/e2e.txt 2>&1
JRT_PROMPT_PDL=0 timeout $(left 490) jrt-bench e2e --models mamba2-370m --contexts 2048 --batches 1 --no-hf \
  --json $OUT/e2e_mamba2_nopdl.json > /tmp/e2e_nopdl.txt 2>&1
timeout $(left 550) python3 benchmarks/prefill_profile.py --decode-only > /tmp/prof.txt 2>&1
for f in /tmp/dk.txt /tmp/e2e.txt /tmp/e2e_nopdl.txt /tmp/prof.txt $OUT/gpu_logs.txt; do echo "=========== $f"; cat $f; done >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
