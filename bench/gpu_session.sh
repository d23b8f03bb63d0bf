#!/usr/bin/env bash
# One GPU session for the checks that need CUDA, on a machine that has PyTorch with CUDA but may lack
# this pack's pure-Python requirements and cannot download anything.
#
#   bash bench/gpu_session.sh prepare     # where pip can download: wheels into ./.whl (git-ignored, ~8 MB)
#   bash bench/gpu_session.sh run [OUT]   # on the GPU machine: install ./.whl into /tmp/site, then
#                                         # bench/gpu_check.py (full size) and the CUDA-only tests;
#                                         # logs to OUT (default ./gpu_session_out)
#
# Wheels: diffusers (WanTransformer3DModel, context parallelism), plyfile/trimesh (the pack's
# exporters, imported by fourd_core), ftfy + wcwidth (text cleaning). torch, transformers, peft,
# accelerate, safetensors, einops, huggingface-hub, numpy, pillow and imageio are expected there.
# imageio-ffmpeg (68 MB) is left out: the GPU check writes no video.
set -u -o pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 plyfile==1.1.5 trimesh==5.2.0 ftfy==6.3.1 wcwidth==0.9.4)

case "${1:-}" in
prepare)
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  du -sh .whl
  ;;
run)
  out="${2:-gpu_session_out}"
  mkdir -p "$out"
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$out/gpu.txt"
  # 1. the one-table check (< 8 min target; --budget-s skips late sections rather than overrun)
  timeout 460 python3 bench/gpu_check.py --budget-s 400 2>&1 | tee "$out/gpu_check.log"
  rc=$?
  # 2. CUDA-only tests (gsplat vs torch rasteriser where gsplat imports; ring/ulysses need 2 GPUs)
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/splats/test_splats.py -k gsplat 2>&1 | tee "$out/cuda_tests.log"
  exit $rc
  ;;
*)
  echo "usage: bash bench/gpu_session.sh prepare | run [OUT]" >&2
  exit 2
  ;;
esac
