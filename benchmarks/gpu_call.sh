#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# This call: the model-level GPU tests the fused Mamba-2 decode (PDL) and RecurrentState.copy_ touch.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=/tmp/log.txt; cat /tmp/setup.txt > $L
bash benchmarks/gpu_tests.sh 480 tests/test_mamba2.py tests/test_fla_mamba.py tests/test_gla_gpu.py >/dev/null
cat $OUT/gpu_summary.txt >> $L
echo "=========== logs" >> $L; cat $OUT/gpu_logs.txt >> $L
rm -f $OUT/gpu_summary.txt $OUT/gpu_logs.txt; mv $L $OUT/log.txt; ls $OUT
