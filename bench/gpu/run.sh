#!/usr/bin/env bash
# On the GPU machine (device tool), after bench/gpu/fetch_wheels.sh here:
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=480)
# Installs the carried wheels, runs the tests that need a CUDA GPU, then bench/gpu/serve_cuda.py;
# logs and figures go to $OUT (they come back). About 3 minutes on an H200.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())" 2>&1 | tee -a "$OUT/gpu.txt"
# the device's numpy/torch are newer than CI's: their deprecation warnings are not errors here
timeout 240 python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning -rs \
  "tests/integration/test_devices_api.py::test_a_torch_model_serves_on_cuda_with_the_cpu_answers" \
  "tests/integration/test_devices_api.py::test_an_exported_program_serves_on_cuda_with_the_cpu_answers" \
  tests/unit/formats/test_torch_export.py tests/integration/test_model_failures.py 2>&1 | tee "$OUT/tests.log"
timeout 300 python3 bench/gpu/serve_cuda.py --json "$OUT/serve_cuda.json" 2>&1 | tee "$OUT/serve_cuda.log"
