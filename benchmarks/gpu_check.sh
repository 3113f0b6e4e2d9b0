#!/usr/bin/env bash
# Train the CNN, the GRU and the FCN with bf16-mixed on one GPU; print samples/s against the CPU and achieved
# TFLOP/s against the GPU's peak. Options: see `benchmarks/gpu_check.sh --help`.
# Needs a CUDA build of torch 2.13.0 in the environment (the project's .venv holds the CPU wheel):
#   PYTHON=/path/to/cuda-venv/bin/python benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: torch sees no CUDA GPU ($("$PYTHON" -c 'import torch; print(torch.__version__)')); run it on a GPU machine" >&2
    exit 1
}
exec "$PYTHON" -m benchmarks.gpu_check "$@"
