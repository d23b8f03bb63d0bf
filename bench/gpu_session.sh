#!/usr/bin/env bash
# One GPU session for the checks that need CUDA, on a machine that has PyTorch with CUDA but may lack
# this pack's pure-Python requirements and cannot download anything.
#
#   bash bench/gpu_session.sh prepare      # where pip can download: empties ./.whl, puts the wheels there
#   bash bench/gpu_session.sh run OUTDIR   # on the GPU machine: install ./.whl into a fresh temporary folder,
#                                          # check the imports (fatal), run bench/gpu_check.py; logs to OUTDIR
#
# On the lent GPU machine (its working-tree copy gets $OUT, the folder whose files come back):
#   1. here, once:  bash bench/gpu_session.sh prepare          (~8 MB; .whl/ is git-ignored)
#   2. the one device call:
#        run(command="bash bench/gpu_session.sh run $OUT/gs", carry=[".whl"], timeout_s=600)
#      .whl must be named in carry (ignored paths travel only that way). The run takes at most about
#      GPU_CHECK_BUDGET_S (480) + 60 s: gpu_check starts no section its estimate says would end after the
#      budget and stops a running one there; timeout -s INT stops it 30 s after the budget (SIGKILL 15 s
#      later), so the table is printed, and OUTDIR/gpu_check_table.txt is rewritten after every row anyway.
#      With ~3 min of machine start that is ~12 of the 15 device minutes: there is no time for a second call;
#      GPU_CHECK_BUDGET_S=300 shortens it (the sections cut come last: grid attention, VAE decode).
#   OUTDIR then holds: gpu.txt (GPU, driver, versions), import_check.log, gpu_check.log (rows as measured and
#   the final table), gpu_check_table.txt (the table alone), session.log (this script's own lines).
#
# Without CUDA (CI, a laptop) `run` is a CPU emulation: gpu_check --tiny, whose CUDA sections say "needs CUDA".
#
# Wheels: diffusers (WanTransformer3DModel, cache hooks, context parallelism), plyfile/trimesh (the pack's
# exporters, imported by fourd_core), ftfy + wcwidth (text cleaning). torch, transformers, peft, accelerate,
# safetensors, einops, huggingface-hub, numpy, pillow and imageio are expected there. imageio-ffmpeg (68 MB)
# is left out: the GPU check writes no video. PYTHON (default python3) picks the interpreter.
set -u -o pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 plyfile==1.1.5 trimesh==5.2.0 ftfy==6.3.1 wcwidth==0.9.4)
PY="${PYTHON:-python3}"
WHL="${GPU_SESSION_WHEELS:-.whl}"    # the wheel folder (tests point it elsewhere)
BUDGET="${GPU_CHECK_BUDGET_S:-480}"

case "${1:-}" in
prepare)
  rm -rf .whl && mkdir -p .whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}" || { echo "wheel download failed" >&2; exit 1; }
  n=$(compgen -G ".whl/*.whl" | wc -l)
  if [ "$n" -ne "${#WHEELS[@]}" ]; then
    echo "expected ${#WHEELS[@]} wheels in .whl, found $n:" >&2; ls .whl >&2; exit 1
  fi
  ls .whl && du -sh .whl
  ;;
run)
  out="${2:-}"
  if [ -z "$out" ]; then
    echo "usage: bash bench/gpu_session.sh run OUTDIR   (on the GPU machine: \$OUT/gs)" >&2
    exit 2
  fi
  mkdir -p "$out" || exit 2
  log() { echo "[gpu_session $(date +%T)] $*" | tee -a "$out/session.log"; }
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  if compgen -G "$WHL/*.whl" >/dev/null; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/fourd_site.XXXXXX")"
    trap 'rm -rf "$site"' EXIT
    log "installing $(ls "$WHL" | tr '\n' ' ')into $site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHL"/*.whl \
      2>&1 | tee -a "$out/session.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { log "FATAL: wheel install failed"; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    log "no wheels in $WHL (fine where diffusers etc. are installed; else run 'prepare' and carry .whl)"
  fi
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
  else
    echo "no nvidia-smi" | tee "$out/gpu.txt"
  fi
  # fatal: everything the check imports must import, or the window is spent on tracebacks
  if ! "$PY" bench/gpu_check.py --import-check 2>&1 | tee "$out/import_check.log" | tee -a "$out/gpu.txt"; then
    log "FATAL: imports failed (see import_check.log); run 'bash bench/gpu_session.sh prepare' where pip works and carry .whl"
    exit 1
  fi
  mode=()
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    mode=(--tiny)
    log "no CUDA: CPU emulation (gpu_check --tiny; the CUDA sections are listed as skipped)"
  fi
  log "gpu_check ${mode[*]+${mode[*]}} --budget-s $BUDGET (SIGINT at $((BUDGET + 30)) s, SIGKILL 15 s later)"
  timeout -s INT -k 15 $((BUDGET + 30)) "$PY" bench/gpu_check.py ${mode[@]+"${mode[@]}"} --budget-s "$BUDGET" \
    --table "$out/gpu_check_table.txt" 2>&1 | tee -i "$out/gpu_check.log"
  rc=${PIPESTATUS[0]}
  log "gpu_check exit status $rc (0 all sections ran, 1 a section failed, 130 interrupted, 124/137 timeout)"
  # the pack's CUDA-only unit test, where its package exists (the correctness checks are gpu_check's 'check' rows)
  if "$PY" -c "import gsplat" 2>/dev/null; then
    timeout -s INT 90 "$PY" -m pytest -q -p no:cacheprovider tests/splats/test_splats.py -k gsplat 2>&1 \
      | tee -i "$out/cuda_tests.log"
  else
    log "gsplat not installed: its CUDA rasteriser test is not run"
  fi
  ls -l "$out" | tee -a "$out/session.log"
  exit "$rc"
  ;;
*)
  echo "usage: bash bench/gpu_session.sh prepare | run OUTDIR" >&2
  exit 2
  ;;
esac
