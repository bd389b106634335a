#!/usr/bin/env bash
# On the GPU machine, after `source benchmarks/gpu_setup.sh`: run each GPU test file under its own time
# limit (a stuck file cannot eat the whole call), logs and a summary under $OUT. Usage:
#   bash benchmarks/gpu_tests.sh SECONDS_TOTAL [test files...]
total=${1:-500}; shift
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(tests/test_ops_based_triton.py tests/test_ops_ssm.py tests/test_mamba.py
  tests/test_mamba2.py tests/test_cuda_graph_gpu.py tests/test_based.py tests/test_ops_based.py
  tests/test_ops_selective_scan_triton.py tests/test_cli.py tests/test_pipeline.py tests/test_eval_lm_eval.py
  tests/test_train_recall.py tests/test_fla_mamba.py tests/test_gla_gpu.py)
deadline=$(( $(date +%s) + total ))
summary=$OUT/gpu_summary.txt
logs=/tmp/gpulogs; mkdir -p $logs
: > "$summary"
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  left=$(( deadline - $(date +%s) ))
  if [ $left -lt 20 ]; then echo "NOT RUN (time): $f" | tee -a "$summary"; continue; fi
  start=$(date +%s)
  timeout $left python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=3 "$f" > "$logs/$(basename "$f" .py).txt" 2>&1
  rc=$?
  line=$(grep -E "^[0-9]+ (passed|failed)|^(FAILED|ERROR) |passed|failed|error" "$logs/$(basename "$f" .py).txt" | tail -1)
  echo "$f rc=$rc $(( $(date +%s) - start ))s :: $line" | tee -a "$summary"
done
# one file back for all logs (the device returns at most 8 files)
for l in $logs/*.txt; do echo "=================== $l"; cat "$l"; done > $OUT/gpu_logs.txt
