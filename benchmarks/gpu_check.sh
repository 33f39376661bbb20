#!/usr/bin/env bash
# One short GPU check for a CUDA host: the needs_cuda tests, the throughput comparison on the GPU, and
# the resizer's cost against ResNet-50 on the GPU.
# Writes results under ${OUT:-results/gpu}: pytest.log, throughput.json/.log, resizer.json/.log.
#   bash benchmarks/gpu_check.sh [--data DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1
python -c "import dali_resizer, nvidia.dali" 2>/dev/null || pip install -q -e ".[test]" || exit 1
python -m pytest -m needs_cuda -q -rA 2>&1 | tee "$out/pytest.log"
tests=${PIPESTATUS[0]}
python benchmarks/throughput.py --device cuda --backbone resnet50 --json "$out/throughput.json" "$@" 2>&1 | tee "$out/throughput.log"
bench=${PIPESTATUS[0]}
python benchmarks/resizer.py --device cuda --json "$out/resizer.json" 2>&1 | tee "$out/resizer.log"
resizer=${PIPESTATUS[0]}
echo "gpu_check: pytest exit $tests, throughput exit $bench, resizer exit $resizer"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$resizer" -eq 0 ]
