#!/usr/bin/env bash
# Every GPU measurement of issue #9 in one call: `edensplit bench --mode perf` (stages: encoder ms/frame, edge
# ms/pair at batch 1 and at the best of 1/2/4/8/16, edge ms per generated frame in a session, peak GPU memory;
# system: pairs/s end to end and bytes per generated frame through a real cloud and edge) at 256x448, 480x854
# and 1080x1920 in float32, bfloat16 and float16, written as JSON and Markdown.
#
#   benchmarks/gpu.sh [--cpu-smoke] [OUT_DIR]
#
# OUT_DIR defaults to $OUT (set on the device machine: what lands there comes back), else benchmarks/.
# Files: perf-gpu.json, perf-gpu.md, perf-gpu.log (this run's output) and perf-gpu-servers.log (the tail of
# every server's log); with --cpu-smoke, perf-cpu-smoke.* instead: the same script on a CPU at a tiny size
# (48x64, bfloat16 and float32, batches 1 and 2, 3 frames), which is how it is tested (tests/test_gpu_script.py).
# The measurements start nothing after GPU_SH_BUDGET_S seconds (default 265; what did not start is listed
# as skipped) and the whole bench is killed after GPU_SH_TIMEOUT seconds (default 290), the files written so far
# kept. The model is the full-size EDEN with random weights unless MODEL_PATH is set.
#
# The device machine's Python lacks the servers' packages: fetch them here first as wheels into .whl/
# (benchmarks/gpu-wheels.sh), then carry .whl with the run; this script installs them outside the tree.
# See docs/performance.md, "GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  smoke=1
  shift
fi
out=${1:-${OUT:-benchmarks}}
mkdir -p "$out"
py=${PYTHON:-python3}
started=$SECONDS
wheels=${GPU_SH_WHEELS:-.whl}
if [[ -d "$wheels" ]] && ! "$py" -c "import fastapi, uvicorn, av, pydantic_settings, multipart, zstandard, lz4, websockets" \
    2>/dev/null; then
  site=${GPU_SH_SITE:-/tmp/edensplit-site}
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  echo "gpu.sh: installed $(ls "$wheels" | wc -l) wheels into $site in $((SECONDS - started)) s"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
[[ -n "${MODEL_PATH:-}" ]] || export EDEN_RANDOM_WEIGHTS=1
if ((smoke)); then
  name=perf-cpu-smoke
  args=(--device cpu --sizes 48x64 --precisions bfloat16,float32 --batches 1,2 --frames 3 --iters 1
        --min_seconds 0 --batch_budget_s 5)
else
  name=perf-gpu
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (use --cpu-smoke)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  # Half precision first: if the budget runs out, what is skipped is float32's stages at the end (the system part
  # always starts with float32, the bytes baseline and the frames' reference).
  args=(--device cuda:0 --sizes 256x448,480x854,1080x1920 --precisions bfloat16,float16,float32
        --batches 1,2,4,8,16 --frames 6 --window 2 --iters 3 --min_seconds 0.2 --batch_budget_s 15)
fi
logs=$(mktemp -d)
status=0
timeout "${GPU_SH_TIMEOUT:-290}" "$py" -m edensplit bench --mode perf "${args[@]}" \
  --budget_s "${GPU_SH_BUDGET_S:-265}" --json "$out/$name.json" --output "$out/$name.md" --log_dir "$logs" \
  2>&1 | tee "$out/$name.log" || status=$?
for f in "$logs"/*.log; do
  [[ -e "$f" ]] || continue
  echo "== $(basename "$f")"
  tail -n 40 "$f"
done >"$out/$name-servers.log"
echo "gpu.sh: exit $status after $((SECONDS - started)) s; results in $out/$name.md and $out/$name.json" \
  | tee -a "$out/$name.log"
exit "$status"
