#!/usr/bin/env bash
# The GPU checks quoted in docs/RESULTS.md, as one script for one GPU machine (about 6 minutes on an H100):
#  1. throughput of configs/llama_1b_pretraining.yaml (1.236B parameters, bf16-mixed, SDPA, fused AdamW,
#     8 x 2048 tokens), naive eager vs naive compiled vs compiled with each callback that runs per step at scale;
#  2. every contract case under FSDPStrategy (tools/fsdp_smoke.py): the outcome must match `supports_sharded`.
# Usage: OUT=runs/gpu bash tools/gpu_checks.sh      (needs clight installed: pip install -e .)
# On a lent GPU machine without jsonargparse and without internet, install it from wheels carried in .whl/
# (gitignored; fill it with `pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client`):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site; python3 -m pip install -q --no-deps --no-build-isolation -e .
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
timeout 180 python3 tools/throughput.py --methods naive --steps 20 --warmup 5 --out "$OUT/eager.json" \
    -- --model.compile false > "$OUT/eager.log" 2>&1
grep -E "^\||parameters|out of memory|Error" "$OUT/eager.log"
timeout 420 python3 tools/throughput.py --steps 20 --warmup 8 --out "$OUT/compiled.json" \
    --methods naive configs/l2_anchor.yaml configs/ewc.yaml configs/gradient_mask_magnitude.yaml \
    configs/freeze_lower.yaml > "$OUT/compiled.log" 2>&1
grep -E "^\||parameters|out of memory|Error" "$OUT/compiled.log"
timeout 240 python3 tools/fsdp_smoke.py --devices 1 --out "$OUT/fsdp.json" > "$OUT/fsdp.log" 2>&1
grep -E "^\|" "$OUT/fsdp.log" || tail -20 "$OUT/fsdp.log"
