#!/usr/bin/env bash
# The GPU measurements of "the whole cohort step as one CUDA graph, and same-architecture
# students fused" (docs/gpu.md, "CUDA graphs and fused students"), in one run of at most 8 minutes (BUDGET=450 s of parts, then a summary).
#
#   bash bench/gpu_check.sh            # from the repository root; results in $OUT (default ./gpu_check_out)
#
# Needs one CUDA GPU and a Python with PyTorch (>= 2.1), rich, PyYAML, pandas and pytest; it
# installs nothing and reaches no network: kdbench runs from this checkout (PYTHONPATH=.), on
# synthetic data. Each part has a time limit and appends to its file as it goes, so a part
# that fails or runs out of time leaves the others' results. Writes 7 files to $OUT:
#
#   env.txt       GPU, driver, PyTorch, CUDA, cuDNN
#   tests.txt     the GPU tests: replay equal to eager bit for bit (deterministic mode, unfused
#                 and fused), the fallback when a step can't be captured, fused vs solo
#                 within GPU_FUSED_RTOL, the doctor's check; and the CPU fused tests again
#   bench.jsonl   `kdbench bench --cuda-graphs --fuse-students --json`: 14 methods, batch 64,
#                 channels-last, fp32 and bf16, for resnet32x4→resnet8x4, resnet56→resnet20
#                 and ResNet50→MobileNetV2: eager, fused, one graph, graph + fused, in turns
#   layers.jsonl  per convolution of resnet8x4, resnet20 and MobileNetV2, 14 members, batch 64:
#                 forward + backward of 14 separate convolutions, one grouped (HFTA), vmap
#   doctor.txt    `kdbench doctor --quick --device cuda` (with its CUDA-graph check)
#   summary.md    the tables of bench.jsonl and layers.jsonl
#   log.txt       every part's output and exit code
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The deterministic checks need cuBLAS's workspace setting before CUDA starts.
export CUBLAS_WORKSPACE_CONFIG=:4096:8
METHODS=vanilla,kd,dkd,ctkd,dist,label_revision,label_swap,luminet,nkd,normkd,rld,ttm,wsld,wttm
START=$(date +%s)
BUDGET=${BUDGET:-450}  # seconds for all parts together: later parts get what is left, or are skipped

part() {  # part NAME SECONDS FILE COMMAND...: run COMMAND with a time limit, its stdout to FILE
  local name=$1 limit=$2 file=$3 left
  shift 3
  left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 10 )); then echo "== $name: skipped, the budget is spent" | tee -a "$OUT/log.txt"; return; fi
  (( limit > left )) && limit=$left
  echo "== $name: limit ${limit}s, at $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$file" 2>>"$OUT/log.txt"
  echo "   $name: exit $?" | tee -a "$OUT/log.txt"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__,
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.get_device_name(0),
'capability', torch.cuda.get_device_capability(0), 'tf32 cudnn', torch.backends.cudnn.allow_tf32)" 2>&1
  git log -1 --format='kdbench commit %H' 2>/dev/null
  nproc
} >"$OUT/env.txt"

# 1. Equivalence first: replay vs eager bit for bit, fused vs solo, the fallback, the doctor's check.
part tests 90 "$OUT/tests.txt" "$PY" -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_fused.py

bench() {  # bench TEACHER STUDENT PRECISION STEPS LIMIT
  part "bench $1->$2 $3" "$5" "$OUT/bench.jsonl" "$PY" -m kdbench bench --device cuda --teacher "$1" --student "$2" \
    --methods "$METHODS" --precision "$3" --channels-last --batch-size 64 --steps "$4" --warmup-steps 3 \
    --no-separate --cuda-graphs --fuse-students --json
}
layers() {  # layers ARCH PRECISION LIMIT
  part "layers $1 $2" "$3" "$OUT/layers.jsonl" "$PY" -m kdbench.tools.fusion_bench --device cuda --arch "$1" \
    --members 14 --precision "$2" --channels-last --json
}
# 2. The issue's goal: 14 resnet8x4 students under resnet32x4; then what decides fusion, per layer.
bench resnet32x4 resnet8x4 fp32 20 45
bench resnet32x4 resnet8x4 bf16 20 45
layers resnet8x4 fp32 20
layers resnet8x4 bf16 20
# 3. The deeper students (more kernels per member).
bench resnet56 resnet20 fp32 15 40
bench resnet56 resnet20 bf16 15 40
bench ResNet50 MobileNetV2 fp32 10 50
bench ResNet50 MobileNetV2 bf16 10 50
layers resnet20 bf16 20
layers MobileNetV2 bf16 25
# 4. The doctor's quick checks on this GPU, its CUDA-graph check included.
part doctor 60 "$OUT/doctor.txt" "$PY" -m kdbench doctor --quick --device cuda

"$PY" - "$OUT" >"$OUT/summary.md" 2>>"$OUT/log.txt" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def rows(name):
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []

print("# GPU check\n")
print((out / "env.txt").read_text())
print("## Student images/s, 14 methods, batch 64, channels-last (speed-up over eager; share of the matmul peak)\n")
print("| pair | precision | eager | fused | one graph | graph + fused | captured | fused groups |")
print("|---|---|---:|---:|---:|---:|---|---|")
for r in rows("bench.jsonl"):
    modes = r.get("modes", {})
    def cell(mode):
        m = modes.get(mode)
        if not m:
            return "—"
        share = f", {100 * m['share_of_gemm_peak']:.0f}%" if "share_of_gemm_peak" in m else ""
        return f"{m['student_images_per_s']:,.0f} ({m['speedup']:.2f}×{share})"
    captured = "/".join(str(modes[m].get("captured")) for m in ("graphs", "graphs+fused") if m in modes)
    groups = "; ".join(modes.get("fused", {}).get("groups", []))
    print(f"| {r['teacher']}→{r['student']} | {r['precision']} | {cell('eager')} | {cell('fused')} | "
          f"{cell('graphs')} | {cell('graphs+fused')} | {captured} | {groups} |")
print("\n## Per layer, 14 members, forward + backward, channels-last (ms)\n")
print("| arch | precision | layer | separate | grouped | vmap | separate ÷ best fused |")
print("|---|---|---|---:|---:|---:|---:|")
for r in rows("layers.jsonl"):
    print(f"| {r['arch']} | {r['precision']} | {r['layer']} | {r['separate_ms']:.3f} | {r['grouped_ms']:.3f} | "
          f"{r['vmap_ms']:.3f} | {r['fused_vs_separate']:.2f}× ({r['faster_fused']}) |")
tests = (out / "tests.txt").read_text().strip().splitlines() if (out / "tests.txt").exists() else []
print("\n## Tests\n\n" + (tests[-1] if tests else "not run"))
EOF
echo "done in $(( $(date +%s) - START ))s; results in $OUT" | tee -a "$OUT/log.txt"
