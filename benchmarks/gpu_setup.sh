#!/usr/bin/env bash
# Source this on the GPU machine (no network): installs the carried wheels (.whl: fla, pydantic) and this
# package, without dependencies, on top of the machine's torch/triton/transformers.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/pip-e.log 2>&1 || { cat /tmp/pip-e.log; exit 1; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Triton's compiled kernels and autotune results persist across calls when .tcache is carried back in
# (.tcache_in holds the parts of the last call's cache: carry it)
export TRITON_CACHE_DIR=/tmp/tcache; mkdir -p "$TRITON_CACHE_DIR"
if ls .tcache_in/tcache.tgz.* >/dev/null 2>&1; then cat .tcache_in/tcache.tgz.* | tar xzf - -C "$TRITON_CACHE_DIR"; fi
save_triton_cache() { tar czf - -C "$TRITON_CACHE_DIR" . | split -b 15m - "$OUT/tcache.tgz."; ls -la "$OUT"/tcache.tgz.*; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, transformers, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'fla', fla.__version__)"
