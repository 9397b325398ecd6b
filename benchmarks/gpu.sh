#!/usr/bin/env bash
# Every GPU measurement of issues #9 and #16 in one call: first the check of the encodings' copies between host and
# device (benchmarks/transfers_check.py: the bits, and the model thread's time; transfers-<suffix>.json and .log), then
# three parts, each written as JSON and Markdown:
# 1. perf: `edensplit bench --mode perf` (stages: encoder ms/frame, edge ms/pair at batch 1 and at the best of
#    1/2/4/8/16, edge ms per generated frame in a session, peak GPU memory; system: pairs/s end to end and bytes
#    per generated frame through a real cloud and edge) at 256x448, 480x854 and 1080x1920 in float32, bfloat16
#    and float16;
# 2. e2e: the system part end to end through both servers at 480x854 and 1080x1920 (bfloat16, float16 on the
#    wire, flow A frame-once) with shared memory (http-shm: --shm, ALLOW_SHM=1) and HTTP binary beside it: both
#    servers on cuda:0, or, where `nvidia-smi -L` lists two GPUs or more, the cloud on cuda:0 and the edge on
#    cuda:1 (the user's one-host deployment), to hold against the edge stage's own ms per generated frame (perf);
# 3. overhead: `edensplit bench --mode overhead` with the stand-in model on cuda:0 at 480x854 and 1080x1920
#    (float16, flow A frame-once, HTTP and WebSocket, binary and shared memory): the serving overhead beside the
#    floor, the device-to-host copies included.
#
#   benchmarks/gpu.sh [--cpu-smoke] [OUT_DIR]
#
# OUT_DIR defaults to $OUT (set on the device machine: what lands there comes back), else benchmarks/.
# Files per part: <part>-gpu.json, .md, .log (its output) and <part>-gpu-servers.log (the tail of
# every server's log); with --cpu-smoke, <part>-cpu-smoke.* instead: the same script on a CPU at a tiny size
# (48x64, 3 frames; perf: bfloat16 and float32, batches 1 and 2), which is how it is tested
# (tests/test_gpu_script.py). Each part starts nothing after its budget (GPU_SH_BUDGET_S, default 265 for perf;
# GPU_SH_E2E_BUDGET_S, 100; GPU_SH_OVERHEAD_BUDGET_S, 60; what did not start is listed as skipped) and is killed
# after its timeout (GPU_SH_TIMEOUT, default 290; GPU_SH_E2E_TIMEOUT, 125; GPU_SH_OVERHEAD_TIMEOUT, 120; the
# transfers check, 30), the files written so far kept: about 9.5 minutes in all. The model is the full-size EDEN with random weights unless
# MODEL_PATH is set (the overhead part's is the stand-in: MODEL_PATH is unset for it).
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
# One part: `edensplit bench --mode MODE ARGS...` under `timeout`, its output in $out/NAME.log, its servers' log
# tails in $out/NAME-servers.log (when it started any); its exit status noted in $status.
status=0
part() {
  local name=$1 limit=$2 mode=$3
  shift 3
  local logs rc=0
  logs=$(mktemp -d)
  timeout "$limit" "$py" -m edensplit bench --mode "$mode" "$@" --json "$out/$name.json" --output "$out/$name.md" \
    --log_dir "$logs" 2>&1 | tee "$out/$name.log" || rc=$?
  for f in "$logs"/*.log; do
    [[ -e "$f" ]] || continue
    echo "== $(basename "$f")"
    tail -n 40 "$f"
  done >"$logs/tails"
  [[ -s "$logs/tails" ]] && cp "$logs/tails" "$out/$name-servers.log"
  echo "gpu.sh: $name exit $rc after $((SECONDS - started)) s; results in $out/$name.md and $out/$name.json" \
    | tee -a "$out/$name.log"
  ((rc == 0)) || status=$rc
}
sizes=480x854,1080x1920
if ((smoke)); then
  suffix=cpu-smoke
  sizes=48x64
  perf=(--device cpu --sizes 48x64 --precisions bfloat16,float32 --batches 1,2 --frames 3 --iters 1
        --min_seconds 0 --batch_budget_s 5)
  e2e=(--device cpu --frames 3)
  # a round per row, two rows: the script, not the figures
  overhead=(--frames 3 --budget_s "${GPU_SH_OVERHEAD_BUDGET_S:-2}" --transports http-binary,http-shm)
  overhead_device=cpu
  device=cpu
else
  suffix=gpu
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (use --cpu-smoke)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  # Half precision first: if the budget runs out, what is skipped is float32's stages at the end (the system part
  # always starts with float32, the bytes baseline and the frames' reference).
  perf=(--device cuda:0 --sizes 256x448,480x854,1080x1920 --precisions bfloat16,float16,float32
        --batches 1,2,4,8,16 --frames 6 --window 2 --iters 3 --min_seconds 0.2 --batch_budget_s 15)
  e2e=(--device cuda:0 --frames 6)
  if (($(nvidia-smi -L 2>/dev/null | grep -c '^GPU') >= 2)); then
    e2e+=(--edge_device cuda:1)
  fi
  overhead=(--frames 6 --budget_s "${GPU_SH_OVERHEAD_BUDGET_S:-60}" --transports http-binary,http-shm,ws-binary,ws-shm)
  overhead_device=cuda:0
  device=cuda:0
fi
# First, seconds: the encodings' copies on a stream of their own (the cloud's to pinned host memory, cast on the
# device; the edge's to the device, started by the decode step) give the CPU's bits, and the model thread's time.
rc=0
timeout 30 "$py" benchmarks/transfers_check.py "$device" --json "$out/transfers-$suffix.json" 2>&1 \
  | tee "$out/transfers-$suffix.log" || rc=$?
((rc == 0)) || status=$rc
part "perf-$suffix" "${GPU_SH_TIMEOUT:-290}" perf "${perf[@]}" --budget_s "${GPU_SH_BUDGET_S:-265}"
part "e2e-$suffix" "${GPU_SH_E2E_TIMEOUT:-125}" perf "${e2e[@]}" --parts system --sizes "$sizes" \
  --precisions bfloat16 --designs http-shm:float16,http-binary:float16 --window 2 \
  --budget_s "${GPU_SH_E2E_BUDGET_S:-100}"
# The stand-in model (refused beside MODEL_PATH) on $overhead_device, in a subshell of its own.
(
  unset MODEL_PATH
  export DEVICE=$overhead_device
  part "overhead-$suffix" "${GPU_SH_OVERHEAD_TIMEOUT:-120}" overhead --sizes "$sizes" \
    --dtypes float16 --flows a-once "${overhead[@]}"
  exit "$status"
) || status=$?
echo "gpu.sh: exit $status after $((SECONDS - started)) s"
exit "$status"
