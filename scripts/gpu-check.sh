#!/usr/bin/env bash
# GPU readiness check (a few minutes on a machine with an NVIDIA GPU; docs/onnx.md, "GPU check").
#
#   scripts/gpu-check.sh [--cpu-dry-run] [--work DIR] [--exported DIR] [--no-tensorrt]
#
# 1. torch: the default model (1 step), its teacher (40 steps) and an imported soundctm-dit
#    stand-in on CUDA vs the CPU, same seeds: max difference, spectral convergence, timings;
# 2. a bf16 training step (`soundctm train`, tiny DiT on SynthCaps) and a bf16 distillation step
#    (`soundctm distill` from the default teacher);
# 3. `soundctm export` of the default model, then in a separate venv (.venv-gpu, the [gpu] extra:
#    onnxruntime-gpu, never beside onnxruntime) onnxruntime's CUDA and TensorRT providers vs
#    torch: parity and time ratios;
# 4. `soundctm export --format tensorrt` and a run of its engines (a missing TensorRT is
#    reported, not fatal).
# Prints a summary; exits 1 if a check failed, 2 without a GPU (unless --cpu-dry-run, which runs
# every step with the CPU standing in for the GPU and the main venv's onnxruntime instead of the
# [gpu] venv, to test this script on a machine without one).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
WORK=""
EXPORTED=""
TENSORRT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --work) WORK="$2"; shift ;;
    --exported) EXPORTED="$2"; shift ;;
    --no-tensorrt) TENSORRT=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-.venv/bin/python}"
SOUNDCTM="$(dirname "$PY")/soundctm"
if [ ! -x "$PY" ]; then
  echo "error: no $PY; install first: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2
  exit 2
fi
WORK="${WORK:-$(mktemp -d -t soundctm-gpu-check.XXXXXX)}"
mkdir -p "$WORK"

if [ "$DRY" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi finds none); this check needs one." >&2
    echo "       Run with --cpu-dry-run to exercise every step on the CPU." >&2
    exit 2
  fi
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: nvidia-smi sees a GPU but torch does not (torch.cuda.is_available() is False);" >&2
    echo "       install a CUDA build of torch in .venv" >&2
    exit 2
  fi
  nvidia-smi -L
  echo "work folder: $WORK"
else
  echo "DRY RUN on the CPU (--cpu-dry-run): the CPU stands in for the GPU, the main venv's"
  echo "onnxruntime for the [gpu] venv; differences are 0 and ratios compare the CPU with itself."
  echo "work folder: $WORK"
fi

declare -a SUMMARY=()
FAILED=0
# step NAME COMMAND...: runs it with its output in WORK/NAME.log, records ok / FAILED / a note
step() {
  local name="$1"; shift
  local start=$SECONDS
  echo "== $name"
  if "$@" > "$WORK/$name.log" 2>&1; then
    SUMMARY+=("ok      $name ($((SECONDS - start)) s)")
  else
    SUMMARY+=("FAILED  $name ($((SECONDS - start)) s): see $WORK/$name.log")
    FAILED=1
    tail -5 "$WORK/$name.log" | sed 's/^/   | /'
  fi
}

DRYFLAG=()
[ "$DRY" = 1 ] && DRYFLAG=(--cpu-dry-run)
step torch-sampling "$PY" scripts/gpu_check.py torch "$WORK" "${DRYFLAG[@]}"

step train-bf16 "$SOUNDCTM" train --config configs/teacher-tiny.toml --out "$WORK/train" \
  --steps 2 --batch-size 4 --save-every 2 --log-every 1 --num-workers 0 --mixed-precision bf16
step distill-bf16 "$SOUNDCTM" distill --config configs/default-student.toml \
  --teacher soundctm/models/default/teacher --out "$WORK/distill" --online \
  --steps 2 --batch-size 4 --save-every 2 --log-every 1 --num-workers 0 --mixed-precision bf16

if [ -z "$EXPORTED" ]; then
  EXPORTED="$WORK/exported"
  step export-onnx "$SOUNDCTM" export --model soundctm/models/default --out "$EXPORTED"
fi

if [ "$DRY" = 1 ]; then
  step onnxruntime "$PY" scripts/gpu_check.py ort "$WORK" "$EXPORTED" --providers cpu
  GPY=""
else
  # onnxruntime-gpu in its own venv: never beside onnxruntime (the main venv has that one)
  GPY=".venv-gpu/bin/python"
  if [ ! -x "$GPY" ]; then
    step gpu-venv bash -c 'python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -e ".[gpu]"'
  fi
  if "$GPY" -m pip show onnxruntime >/dev/null 2>&1; then
    SUMMARY+=("FAILED  .venv-gpu has onnxruntime beside onnxruntime-gpu: remove the venv")
    FAILED=1
  else
    step onnxruntime "$GPY" scripts/gpu_check.py ort "$WORK" "$EXPORTED" --providers cuda tensorrt
  fi
fi

if [ "$TENSORRT" = 1 ] && [ -n "$GPY" ]; then
  if ! "$GPY" -c "import tensorrt" >/dev/null 2>&1; then
    "$GPY" -m pip install tensorrt > "$WORK/tensorrt-install.log" 2>&1 || true
  fi
  if "$GPY" -c "import tensorrt" >/dev/null 2>&1; then
    TRT_DIR="$WORK/exported-tensorrt"
    step export-tensorrt "$(dirname "$GPY")/soundctm" export --model soundctm/models/default \
      --out "$TRT_DIR" --format tensorrt
    step tensorrt-run "$GPY" scripts/gpu_check.py ort "$WORK" "$TRT_DIR" --providers cuda \
      --tensorrt --name tensorrt
  else
    SUMMARY+=("missing TensorRT: the tensorrt package is not installable here (see $WORK/tensorrt-install.log); --format tensorrt not checked")
  fi
elif [ "$DRY" = 1 ]; then
  # no engines without a GPU: the TensorRT entry points must stop with one clear line
  step tensorrt-refuses bash -c 'out=$("$0" export --model soundctm/models/default --out "$1" \
    --format tensorrt 2>&1); rc=$?; echo "exit $rc: $out"
    [ "$rc" = 2 ] && [ "$(printf "%s\n" "$out" | wc -l)" = 1 ] && [[ "$out" == error:* ]]' \
    "$SOUNDCTM" "$WORK/trt"
fi

echo
echo "== timings (ratios)"
"$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
t = json.loads((work / "torch.json").read_text()) if (work / "torch.json").exists() else {}
if t:
    print(f"device: {t['device']}")
    for k in ("default_1_step", "teacher_40_steps", "soundctm_dit_standin_2_steps"):
        e = t[k]
        print(f"  {k}: GPU vs CPU max |diff| {e['max_abs_diff']:.2e} (peak {e['peak']:.2f}), "
              f"spectral convergence {e['spectral_convergence']:.2e}, {1000 * e['gpu_seconds_batch_1']:.1f} ms")
    print(f"  teacher 40 steps / student 1 step: {t['ratio_teacher_40_steps_over_1_step']:.1f}x")
for name in ("ort", "tensorrt"):
    f = work / f"{name}.json"
    if f.exists():
        for k, e in json.loads(f.read_text()).items():
            if isinstance(e, dict) and "error" in e:
                print(f"  {k}: {e['error']}")
            elif isinstance(e, dict):
                print(f"  {k} ({', '.join(e['providers_first']) or 'engines'}): vs torch max |diff| "
                      f"{e['max_abs_diff']:.2e}, spectral convergence {e['spectral_convergence']:.2e}, "
                      f"{1000 * e['seconds_batch_1']:.1f} ms = {e['ratio_over_torch']:.2f}x torch")
EOF
echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
