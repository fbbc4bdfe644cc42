#!/bin/bash
# Multi-node GPU training over plain ssh: one process per host, host 0 is the coordinator.
#   KFJ_HOSTS="gpu0 gpu1" launch/gpu_ssh.sh [--dry_run] --config experiments/configs/X.py:args \
#       --workdir /shared/runs/$(date '+%m-%d_%H%M')
# Every host needs the repo at $KFJ_REPO (default: this checkout's path) with its venv at $KFJ_PYTHON, and a
# workdir every host sees (shared filesystem or gs://). Ctrl-C (or one failed host) stops all of them.
set -euo pipefail
read -r -a HOSTS <<< "${KFJ_HOSTS:?set KFJ_HOSTS=\"host0 host1 ...\"}"
REPO="${KFJ_REPO:-$(cd "$(dirname "$0")/.." && pwd)}"
PY="${KFJ_PYTHON:-python3}"
PORT="${KFJ_PORT:-12355}"
DRY=0
if [[ "${1:-}" == "--dry_run" ]]; then DRY=1; shift; fi
ARGS=$(printf '%q ' "$@")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for i in "${!HOSTS[@]}"; do
  REMOTE="cd $(printf '%q' "$REPO") && KFJ_COORDINATOR=${HOSTS[0]}:$PORT KFJ_NUM_PROCESSES=${#HOSTS[@]} \
KFJ_PROCESS_ID=$i KFJ_HEARTBEAT_TIMEOUT=${KFJ_HEARTBEAT_TIMEOUT:-100} exec $(printf '%q' "$PY") -m kforcing_jax.train $ARGS"
  if [[ $DRY == 1 ]]; then
    printf 'ssh %q %q\n' "${HOSTS[$i]}" "$REMOTE"
  else
    ssh -tt "${HOSTS[$i]}" "$REMOTE" 2>&1 | sed -u "s/^/[${HOSTS[$i]}] /" &
    PIDS+=($!)
  fi
done
[[ $DRY == 1 ]] && exit 0
# A failed host ends the script (the trap kills the rest); a host whose peer died exits by itself within
# KFJ_HEARTBEAT_TIMEOUT seconds, so waiting in order never hangs on a dead job.
for p in "${PIDS[@]}"; do wait "$p" || exit $?; done
