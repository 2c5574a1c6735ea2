#!/usr/bin/env bash
# Record a benchmark run into a folder: every pytest-benchmark suite in one run (JSON + report),
# the per-phase step table plain and accelerated, and one timed SYSU-MM01-sized epoch.
#
#   benchmarks/record.sh results/reference/benchmarks-cpu          # CPU: resnet18, 128x64, batch 32
#   benchmarks/record.sh results/reference/benchmarks-h100         # CUDA: resnet50, 288x144, batch 64
#
# The epoch runs with mcm.lr=0.01: from a random init on random images the MCM adversary can blow
# up at the paper's 0.1 (speed does not depend on it). Run it on a quiet machine: other jobs on the
# same cores or GPU distort every figure.
# PYTHON (default .venv/bin/python, else python3) runs the suites and `python -m harness.cli`.
set -euo pipefail

out=${1:?usage: benchmarks/record.sh OUTPUT_FOLDER}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$out"
vireid() { "$python" -m harness.cli "$@"; }

if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    device=cuda backbone=resnet50 size=288x144 batch=64
else
    device=cpu backbone=resnet18 size=128x64 batch=32
fi
step=(--method mclnet --backbone "$backbone" --size "$size" --batch "$batch" --device "$device")
accelerated=(--amp bf16 --channels-last --compile --set train.fused_optimizer=true)
tag="$backbone-$size"

"$python" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$out/benchmarks.json" | tee "$out/pytest-benchmark.txt"
vireid bench-report "$out/benchmarks.json" --out "$out/report.md" > /dev/null
vireid bench "${step[@]}" --steps 10 --warmup 5 | tee "$out/bench-step-$tag-fp32-eager.txt"
vireid bench "${step[@]}" --steps 10 --warmup 5 "${accelerated[@]}" | tee "$out/bench-step-$tag-accelerated.txt"
vireid bench --epoch "${step[@]}" --warmup 5 "${accelerated[@]}" --set mcm.lr=0.01 | tee "$out/bench-epoch-sysu-$tag-accelerated.txt"
"$python" - "$out/versions.txt" <<'EOF'
import platform, sys
import timm, torch
lines = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"timm {timm.__version__}",
         f"machine {platform.machine()} {platform.processor()}", f"cpu threads {torch.get_num_threads()}"]
if torch.cuda.is_available():
    lines += [f"gpu {torch.cuda.get_device_name()}", f"cuda {torch.version.cuda}", f"cudnn {torch.backends.cudnn.version()}"]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF
echo "recorded in $out"
