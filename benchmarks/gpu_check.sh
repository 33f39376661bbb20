#!/usr/bin/env bash
# The GPU check: one short run on a CUDA host (planned for under 9 minutes on one H200; the steps' limits add
# up to 10.7) of
#   1. the whole test suite: the needs_cuda tests first, then the others (pytest-xdist where it is installed)
#   2. the throughput comparison on the GPU: torchvision's CPU loading and its GPU decode_jpeg against
#      DALI + the learned resizer, decode-only with and without libjpeg-turbo's chroma upsampling, and a
#      ResNet-50 training step; the augmentations' cost (TrivialAugmentWide, RandAugment, random erasing,
#      MixUp/CutMix, each against the same pipeline without it, and the recipe on torchvision's CPU loading);
#      5,000 images, batch 256
#   3. the resizer benchmark on CUDA (fp32 and bf16)
#   4. one short training run: ResNet-50 + learned resizer, bf16, channels_last, one epoch of the 5,000 images
#   5. the loader's graphs decoding whole images against only the crops' windows (nvJPEG's ROI decode), each
#      form a step of its own, so that one decoder failing (nvImageCodec issue 55) does not hide the others
# It writes gpu_check.json (every step's exit code and seconds, and every figure) and gpu_check.log
# (everything the steps printed) under the folder given, else $OUT, else results/gpu.
#
#   bash benchmarks/gpu_check.sh [DIR]          on a CUDA host (DALI and torch must import)
#   bash benchmarks/gpu_check.sh --dry [DIR]    anywhere, on the CPU: every step, tiny, to find the script's bugs
#
# On the lent GPU machine (no DALI, no package registry) ../shared/tools/gpu-wheels.sh prints the calls that
# carry DALI there and run this script.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry" ]; then dry=1; shift; fi
out=${1:-${OUT:-results/gpu}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
: > "$log"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" DALI_RESIZER_CACHE="$work/cache"
python=${PYTHON:-python3}

# The limits are the GPU run's plan. The dry run checks the script, not the plan: its limits are 5 times
# longer (GPU_CHECK_LIMIT_SCALE), so that a busy CPU does not stop its steps.
scale=${GPU_CHECK_LIMIT_SCALE:-$((dry ? 5 : 1))}

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output into the log
  local name=$1 limit=$(($2 * scale))
  shift 2
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  # SIGINT first: Python stops as on Ctrl-C (pytest still writes its junit file of the tests run so far)
  timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - start))" >>"$work/steps"
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
}

if ! "$python" -c "import torch, nvidia.dali" 2>>"$log"; then
  echo "gpu_check: torch and nvidia.dali must import (see the header)" | tee -a "$log"
  exit 1
fi
if [ "$dry" = 0 ] && ! "$python" -c "import torch; assert torch.cuda.is_available()" 2>>"$log"; then
  echo "gpu_check: no CUDA device here; --dry runs the steps on the CPU" | tee -a "$log"
  exit 1
fi

if [ "$dry" = 1 ]; then
  device=cpu
  tests=(tests/test_gpu_path.py tests/test_throughput.py)  # (a quick file and a slow one)
  throughput=(--images 40 --batch-size 8 --threads 2 --repeats 1 --learned-images 8 --size 32 --input-size 64
              --backbone resnet18)
  resizer=(--batch-size 2 --input-sizes 64 --size 32 --repeats 1 --precisions fp32
           --rows interpolate resizer resizer-memory-efficient resnet50)
  train=(--backbone resnet18 --batch-size 8 --size 32 --input-size 64 --num-threads 2)
  windows=(--device cpu --threads 2 --batch-size 8 --batches 2 --repeats 1 --size 32)
  images=40
else
  device=cuda
  tests=()
  if "$python" -c "import xdist" 2>/dev/null; then tests=(-n 8 --dist loadfile); fi
  throughput=(--images 5000 --batch-size 256 --threads 8 --repeats 2 --backbone resnet50)
  resizer=(--batch-size 128 --precisions fp32 bf16 --repeats 5)
  train=(--backbone resnet50 --batch-size 128 --log-every 10 --precision bf16)  # (one epoch: 39 steps)
  windows=(--device gpu --threads 8 --batch-size 128 --batches 10 --repeats 3 --size 224)
  images=5000
fi
contenders=(torch-pil-bilinear dali-bilinear dali-learned dali-learned-train decode-only torchvision-decode-jpeg
            "dali-learned-${throughput[-1]}-train" dali-bilinear-ta-wide dali-bilinear-ra dali-bilinear-erase
            dali-bilinear-mix dali-bilinear-recipe torch-pil-bilinear-recipe)
[ "$dry" = 0 ] && contenders+=(decode-only-plain-upsampling)  # (nvJPEG's own upsampling: GPU only)

# The needs_cuda tests first (what only a GPU host can run), then the quick rest, then the slow rest, which
# CI runs too: each step's limit stops it with SIGINT, and its junit file still holds the tests that ran.
step tests-cuda 90 "$python" -m pytest -q -rs -p no:cacheprovider -m needs_cuda "${tests[@]}" \
  --junitxml="$work/junit-cuda.xml"
step tests-quick 90 "$python" -m pytest -q -rs -p no:cacheprovider -m "not needs_cuda and not slow" "${tests[@]}" \
  --junitxml="$work/junit-quick.xml"
step tests-slow 120 "$python" -m pytest -q -rs -p no:cacheprovider -m "slow and not needs_cuda" "${tests[@]}" \
  --junitxml="$work/junit-slow.xml"
step throughput 170 "$python" benchmarks/throughput.py --device "$device" "${throughput[@]}" \
  --contenders "${contenders[@]}" --json "$work/throughput.json"
step resizer 45 "$python" benchmarks/resizer.py --device "$device" "${resizer[@]}" --json "$work/resizer.json"
data=$("$python" -c "from dali_resizer import make_synthetic_folder as m; print(m(images_per_class=-(-$images // 10)))")
step train 45 "$python" -m dali_resizer.train --data "$data" --epochs 1 --device "$device" "${train[@]}" \
  --output "$work/train"
for form in eval-whole eval-window train-whole train-window; do
  step "roi-decode-$form" 20 "$python" benchmarks/roi_decode.py --data "$data" "${windows[@]}" --forms "$form" \
    --json "$work/roi_decode-$form.json"
done

"$python" - "$work" "$out/gpu_check.json" "$dry" <<'PY'
import json, platform, sys, xml.etree.ElementTree as ET
from pathlib import Path

import torch

work, target, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
steps = {name: {"exit": int(rc), "seconds": int(s)}
         for name, rc, s in (line.split() for line in (work / "steps").read_text().splitlines())}


def read(path):
    return json.loads(path.read_text()) if path.is_file() else None


report = {"dry_run": dry, "steps": steps, "python": platform.python_version(), "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import nvidia.dali
    report["dali"] = nvidia.dali.__version__
except ImportError:
    pass
for name in ("cuda", "quick", "slow"):  # the needs_cuda tests, then the others
    junit = work / f"junit-{name}.xml"
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        report[f"tests_{name}"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
        report[f"tests_{name}"]["failed"] = failed
report["throughput"] = read(work / "throughput.json")
report["resizer"] = read(work / "resizer.json")
report["train"] = read(work / "train" / "metrics.json")
report["roi_decode"] = {path.stem.split("-", 1)[1]: read(path)["rows"] for path in sorted(work.glob("roi_decode-*.json"))}
target.write_text(json.dumps(report, indent=2, default=str))
print(json.dumps({"steps": steps, "tests": {k: report.get(f"tests_{k}") for k in ("cuda", "quick", "slow")}},
                 indent=1))
PY
failed=$(awk '$2 != 0 {print $1}' "$work/steps" | tr '\n' ' ')
rm -rf "$work"
echo "gpu_check: figures in $out/gpu_check.json, output in $log${failed:+; failed: $failed}"
[ -z "$failed" ]
