#!/usr/bin/env bash
# GPU acceptance in one command (under 5 minutes on one CUDA GPU): the CUDA tests (`pytest -m gpu`:
# every recipe's step, the compiled low-bit kernel vs eager, peak allocated vs the planner, bf16),
# the low-bit optimizer-step benchmark against torch fused AdamW, torchao and bitsandbytes, the
# chunked loss's time against the naive one (what --loss auto should be on GPUs), and a
# 50-step bf16 pretrain of the 60m preset (tokens/s, peak GPU memory). Writes gpu_report.md (or $1).
# Without a GPU it says so in one line and exits 0. Exit status: 1 if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
REPORT=${1:-gpu_report.md}
WORK=$(mktemp -d)
export SLIMTRAIN_CACHE=${SLIMTRAIN_CACHE:-$WORK/cache}
failed=0
section() { printf '\n## %s\n\n' "$1" >> "$REPORT"; }
fenced() { printf '```\n' >> "$REPORT"; cat "$1" >> "$REPORT"; printf '```\n' >> "$REPORT"; }

{
    echo "# slimtrain GPU acceptance report"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PY" -c "import torch; print(f'- torch {torch.__version__}, CUDA {torch.version.cuda}, '
                                  f'{torch.cuda.get_device_name(0)}, '
                                  f'{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB')"
} > "$REPORT"

echo "gpu_check: 1/4 pytest -m gpu"
section "CUDA tests (pytest -m gpu)"
timeout 180 "$PY" -m pytest -q -m gpu -rA -s -p no:cacheprovider tests > "$WORK/pytest.txt" 2>&1 \
    || failed=1
grep -E "passed|failed|error|peak allocated|^FAILED|^ERROR" "$WORK/pytest.txt" | tail -40 \
    > "$WORK/pytest_summary.txt"
fenced "$WORK/pytest_summary.txt"

echo "gpu_check: 2/4 low-bit optimizer step vs torch fused AdamW, torchao, bitsandbytes"
section "Optimizer step on the GPU: LLaMA-60M shapes (benchmarks/lowbit_step.py --device cuda)"
timeout 120 "$PY" benchmarks/lowbit_step.py --device cuda --rounds 20 > "$WORK/step.txt" 2>&1 \
    || failed=1
grep -E "^\||LLaMA|Targets|Error" "$WORK/step.txt" >> "$REPORT" || tail -20 "$WORK/step.txt" >> "$REPORT"

echo "gpu_check: 3/4 chunked vs naive loss, whole-model forward + backward"
section "Chunked vs naive loss on the GPU (benchmarks/loss_step_time.py --device cuda): decides --loss auto there"
timeout 120 "$PY" benchmarks/loss_step_time.py --device cuda --presets 60m,130m --batch-size 8 \
    --seq-len 1024 --rounds 10 > "$WORK/loss.txt" 2>&1 || failed=1
grep -E "^\||^batch|Error" "$WORK/loss.txt" >> "$REPORT" || tail -20 "$WORK/loss.txt" >> "$REPORT"

echo "gpu_check: 4/4 50-step bf16 pretrain of the 60m preset"
section "50-step bf16 pretrain, 60m preset (slimtrain pretrain --model 60m --precision bf16)"
timeout 180 "$PY" -m slimtrain pretrain --model 60m --steps 50 --precision bf16 --device cuda \
    --eval-every 50 --save-every 50 --out "$WORK/run" > "$WORK/pretrain.txt" 2>&1 || failed=1
if [ -f "$WORK/run/summary.json" ]; then
    "$PY" - "$WORK/run/summary.json" >> "$REPORT" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"- tokens/s: {s['tokens_per_s']:,.0f} ({s['steps']} steps, {s['tokens']:,} tokens)")
print(f"- train loss {s['train_loss']:.3f}, validation loss {s['val_loss']:.3f}")
print(f"- peak GPU memory (max_memory_allocated): {s['peak_memory_bytes'] / 2**20:.0f} MiB; "
      f"optimizer state {s['optimizer_state_bytes'] / 2**20:.1f} MiB "
      f"({s['optimizer_state_bytes'] / s['adamw_state_bytes']:.2f}× AdamW's)")
PYEOF
else
    tail -20 "$WORK/pretrain.txt" > "$WORK/pretrain_tail.txt"
    fenced "$WORK/pretrain_tail.txt"
fi

section "Result"
if [ "$failed" -eq 0 ]; then echo "every part passed" >> "$REPORT"; else
    echo "SOME PART FAILED: see above (full logs were in $WORK)" >> "$REPORT"; fi
echo "gpu_check: report written to $REPORT ($([ $failed -eq 0 ] && echo passed || echo FAILED))"
exit "$failed"
