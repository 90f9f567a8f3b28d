#!/usr/bin/env bash
# The GPU checks quoted in docs/RESULTS.md, as one script for one GPU machine (at most 9 minutes; each step
# has its own timeout and prints what it finished, so a slow machine still leaves the earlier figures):
#  1. the plain-PyTorch reference loop (tools/bench/reference_loop.py) on the same model and batch shape, eager and
#     compiled: the same-device baseline for the clight figures;
#  2. throughput of configs/llama_1b_pretraining.yaml (1.236B parameters, bf16-mixed, SDPA, fused AdamW,
#     8 x 2048 tokens), naive eager vs naive compiled vs compiled with each callback that runs per step at scale;
#  3. every contract case under FSDP2 (ModelParallelStrategy, tests/fsdp_smoke.py) on the GPU: the outcome must
#     match `supports_sharded`.
# Usage: OUT=runs/gpu bash tools/device/gpu_checks.sh      (needs clight installed: pip install -e .)
# On a lent GPU machine without jsonargparse and without internet, install it from wheels carried in .whl/
# (gitignored; fill it with `pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client`):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site; python3 -m pip install -q --no-deps --no-build-isolation -e .
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
timeout 130 python3 tools/bench/reference_loop.py --steps 15 --warmup 4 --compile --out "$OUT/reference.json" \
    > "$OUT/reference.log" 2>&1
grep -E "^\||^\{|parameters|out of memory|Error" "$OUT/reference.log"
timeout 110 python3 tools/bench/throughput.py --methods naive --steps 15 --warmup 4 --out "$OUT/eager.json" \
    -- --model.compile false > "$OUT/eager.log" 2>&1
grep -E "^\||^\{|parameters|out of memory|Error" "$OUT/eager.log"
timeout 230 python3 tools/bench/throughput.py --steps 15 --warmup 5 --out "$OUT/compiled.json" \
    --methods naive configs/l2_anchor.yaml configs/ewc.yaml configs/gradient_mask_magnitude.yaml \
    configs/freeze_lower.yaml > "$OUT/compiled.log" 2>&1
grep -E "^\||^\{|parameters|out of memory|Error" "$OUT/compiled.log"
timeout 60 python3 tests/fsdp_smoke.py --devices 1 --out "$OUT/fsdp.json" > "$OUT/fsdp.log" 2>&1
grep -E "^\||^\{" "$OUT/fsdp.log" || tail -20 "$OUT/fsdp.log"
