#!/usr/bin/env bash
# One GPU call's checks and timings in priority order, each under the time left (the device allows 600 s a call
# and returns at most 8 files): `bash benchmarks/gpu_call.sh` from the repository root on the GPU machine.
# This call: Based's bf16 prefill inside a CUDA graph (the host sync removed), Mamba's bf16 check, GLA's graphed
# prefill, then time to first token with graphs for Based 360M and GLA 1.3B.
source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1
set +e  # gpu_setup.sh sets -e; a failing step must not end the call before the log is written
L=/tmp/log.txt; cat /tmp/setup.txt > $L
t() { local s=$1; shift; timeout $s python3 -m pytest -m gpu -q -p no:cacheprovider -rfE "$@" > /tmp/t.txt 2>&1;
      echo "$* rc=$? :: $(tail -1 /tmp/t.txt)" >> $L; grep -E "^(FAILED|ERROR)|Error|assert" /tmp/t.txt | head -20 >> $L; }
t 90 tests/test_based.py
t 60 tests/test_mamba.py
t 150 tests/test_gla_gpu.py -k "prefill_replays and default"
timeout 230 python3 -m jrt_prompt.bench e2e --models based-360m,gla-1.3b --contexts 2048 --batches 1 --no-hf \
  --json $OUT/e2e.json >> $L 2>&1
mv $L $OUT/log.txt; ls $OUT
