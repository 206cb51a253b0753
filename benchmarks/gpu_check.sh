#!/usr/bin/env bash
# The CUDA path where a GPU is lent: one short script, under 8 minutes on an H100
# (2 minutes more where 2 or more GPUs are lent: one worker per GPU against one).
#   bash benchmarks/gpu_check.sh
# Prints the GPU, runs the GPU tests, AMP vs fp32 agreement with peak device memory,
# the U-Net (b) and 3-D (d) benchmarks on cuda, and the GPU busy share on a 16384^2 scene.
set -u
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PY="uv run python"
status=0

step() {  # step SECONDS TITLE COMMAND...: one part, bounded in time; a miss does not stop the rest
  local limit=$1 title=$2
  shift 2
  echo
  echo "### $title"
  local start=$SECONDS
  timeout "$limit" "$@" || { echo "### $title: exit $?"; status=1; }
  echo "### $title: $((SECONDS - start)) s"
}

if ! command -v nvidia-smi >/dev/null; then
  echo "no nvidia-smi here: this script is for a machine with a CUDA GPU" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || exit 1

step 60 "GPU tests" uv run pytest -q -m gpu tests -p no:cacheprovider
step 45 "AMP vs fp32, peak device memory" $PY benchmarks/gpu_check.py amp --size 2048
step 75 "(b) U-Net/resnet18 overhead on cuda" \
  $PY benchmarks/bench_unet_overhead.py --device cuda --size 4096 --batch-size 8 --repeat 1
step 100 "(d) 3-D U-Net on cuda" \
  $PY benchmarks/bench_volume.py --device cuda --size 256 --repeat 1 --skip-memory
step 170 "GPU busy share, U-Net/resnet18, 16384^2" $PY benchmarks/gpu_check.py busy --size 16384
if [ "$(nvidia-smi -L | grep -c '^GPU ')" -ge 2 ]; then
  step 120 "one worker per GPU against one GPU, 8192^2" $PY benchmarks/gpu_check.py devices --size 8192
else
  echo && echo "### one GPU: no multi-GPU step"
fi
exit $status
