#!/usr/bin/env bash
# Orchestration end to end on the tiny preset, the way a user drives it (called by .ci/run; ~12 min on 2 cores):
#   1. a scratch copy of the project (python -m tasks.workspace), a Prefect server on 127.0.0.1 (a free port), the
#      prefect.yaml deployments on a process work pool, one worker;
#   2. `prefect deployment run 'pipeline/tiny' --watch` completes; then `dvc status` is clean and `dvc repro` idle;
#   3. `dvc exp run -S methods.switch.alpha=0.3`: an ablation driven by DVC alone; `dvc exp show`, `dvc metrics diff`;
#   4. `prefect deployment run 'ablation/tiny' --watch` completes; `dvc status` clean; a headless-Chromium screenshot
#      of the MLflow compare view of its cells (Debian's chromium, installed when missing);
#   5. `dvc repro` in a fresh git clone with the tiny preset applied runs the pipeline from nothing.
# Every process it starts is stopped on exit (the worker before the server). Logs and the screenshot go to
# $SWITCHKD_CI_OUT (default: a folder under the scratch directory, kept only with SWITCHKD_CI_KEEP=1).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/switchkd-orchestration.XXXXXX")"
OUT="${SWITCHKD_CI_OUT:-$SCRATCH/out}"
WORK="$SCRATCH/work"
FRESH="$SCRATCH/fresh"
PIDS=()
mkdir -p "$OUT"

log() { printf '\n=== %s: %s\n' "$(date +%H:%M:%S)" "$*"; }

stop_group() {  # SIGINT a process group (Prefect shuts down on it), then SIGTERM, then SIGKILL
  local pid=$1 sig
  for sig in INT TERM KILL; do
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  done
}

cleanup() {
  local status=$?
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_group "${PIDS[i]}"; done
  wait 2>/dev/null || true
  if [[ $status -ne 0 ]]; then
    for f in "$OUT"/*.log; do [[ -f $f ]] && { echo "--- tail of $f"; tail -n 40 "$f"; }; done
  fi
  if [[ "${SWITCHKD_CI_KEEP:-0}" != 1 ]]; then rm -rf "$WORK" "$FRESH" "$SCRATCH/prefect"; fi
  [[ -z "${SWITCHKD_CI_OUT:-}" && "${SWITCHKD_CI_KEEP:-0}" != 1 ]] && rm -rf "$SCRATCH"
  exit $status
}
trap cleanup EXIT INT TERM

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_http() {  # URL TIMEOUT_S
  "$BIN/python" - "$1" "$2" <<'EOF'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(f"{url} did not answer")
EOF
}

dvc_clean() {  # DIR: `dvc status` reports nothing and `dvc repro` runs nothing
  local status
  status="$(cd "$1" && dvc status --json)"
  [[ "$status" == "{}" ]] || { echo "dvc status in $1 is not clean: $status"; return 1; }
  (cd "$1" && dvc repro) > "$OUT/repro-check.log" 2>&1
  if grep -q "Running stage" "$OUT/repro-check.log"; then echo "dvc repro in $1 ran stages"; return 1; fi
  echo "dvc status clean and dvc repro idle in $1"
}

export PATH="$BIN:$PATH"
export PREFECT_HOME="$SCRATCH/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
unset MLFLOW_TRACKING_URI PREFECT_API_URL

log "scratch project in $WORK"
"$BIN/python" -m tasks.workspace "$ROOT" "$WORK" >/dev/null

PORT="$(free_port)"
log "Prefect server on 127.0.0.1:$PORT"
setsid prefect server start --host 127.0.0.1 --port "$PORT" > "$OUT/prefect-server.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/api/health" 180
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"

log "work pool, concurrency limits, deployments (prefect.yaml), worker"
prefect work-pool create switch-kd --type process > "$OUT/setup.log"
prefect work-pool set-concurrency-limit switch-kd 1 >> "$OUT/setup.log"
prefect concurrency-limit create gpu 1 >> "$OUT/setup.log"
(cd "$WORK" && prefect --no-prompt deploy --all) >> "$OUT/setup.log" 2>&1
prefect deployment ls | tee -a "$OUT/setup.log"
cd "$WORK"
setsid prefect worker start --pool switch-kd > "$OUT/prefect-worker.log" 2>&1 &
PIDS+=($!)
cd "$ROOT"

log "prefect deployment run 'pipeline/tiny' --watch (every method, MiniLLM included)"
prefect deployment run 'pipeline/tiny' --watch --watch-timeout 1800 \
  --param 'methods=["sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch", "minillm"]' | tee "$OUT/pipeline-run.log"
[[ -d "$WORK/runs/tiny/eval/minillm" ]] || { echo "the flow did not evaluate minillm"; exit 1; }
[[ -d "$WORK/runs/tiny/report" ]] || { echo "the flow did not run in $WORK"; exit 1; }
dvc_clean "$WORK"

log "dvc exp run -S methods.switch.alpha=0.3 (an ablation through DVC)"
(cd "$WORK" && dvc exp run -S methods.switch.alpha=0.3) > "$OUT/dvc-exp.log" 2>&1
grep -q "Running stage 'distill@switch'" "$OUT/dvc-exp.log"
if grep -q "Running stage 'distill@kd'" "$OUT/dvc-exp.log"; then echo "dvc exp run re-ran distill@kd"; exit 1; fi
(cd "$WORK" && dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|methods.switch.alpha' && dvc metrics diff \
  --md || true) | tee -a "$OUT/dvc-exp.log"

log "prefect deployment run 'ablation/tiny' --watch"
prefect deployment run 'ablation/tiny' --watch --watch-timeout 1800 | tee "$OUT/ablation-run.log"
dvc_clean "$WORK"

log "MLflow UI compare view of the ablation cells (headless Chromium)"
if ! command -v chromium >/dev/null; then
  apt-get install -y chromium > "$OUT/apt.log" 2>&1 || { apt-get update > /dev/null && apt-get install -y chromium > "$OUT/apt.log" 2>&1; }
fi
"$BIN/python" -m tasks.mlflow_ui --store "sqlite:///$WORK/mlflow.db" --out "$OUT/ablation_compare.png"

log "dvc repro in a fresh clone (tiny preset, methods switch and minillm)"
git clone -q "$WORK" "$FRESH"
(cd "$FRESH" && python -m tasks.params --preset tiny --methods switch,minillm > /dev/null && dvc repro) \
  > "$OUT/fresh-repro.log" 2>&1
grep -q "Running stage 'distill@minillm'" "$OUT/fresh-repro.log"
grep -q "Running stage 'report'" "$OUT/fresh-repro.log"
dvc_clean "$FRESH"

log "orchestration checks passed (logs in $OUT)"
