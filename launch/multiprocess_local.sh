#!/usr/bin/env bash
# N processes on one host, one GPU each (or CPU devices): tests the multi-host path on one machine.
#
#   launch/multiprocess_local.sh NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...]
#   launch/multiprocess_local.sh 2 configs/fake.py runs/mp2
#
# Process i sees only GPU i (CUDA_VISIBLE_DEVICES=i; where CUDA_VISIBLE_DEVICES already lists
# GPUs, the i-th of them) and joins the coordinator at 127.0.0.1:$PORT (default 12355). Logs go
# to WORKDIR/process_<i>.log; the script waits for all processes, and when one fails it stops the
# others (left alone, they would wait for it in their next collective) and fails. Ctrl-C or a
# SIGTERM to the script reaches every process as SIGTERM: each saves a checkpoint and exits.
set -euo pipefail
usage() { sed -n '/^set -euo/q; 2,$p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
n=$1; config=$2; workdir=$3; shift 3
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be a positive integer, got '$n'" >&2; usage; }
[ -f "${config%%:*}" ] || { echo "config file not found: ${config%%:*}" >&2; exit 2; }
port=${PORT:-12355}
IFS=, read -ra gpus <<<"${CUDA_VISIBLE_DEVICES:-}"
if [ "${JAX_PLATFORMS:-}" != cpu ] && [ ${#gpus[@]} -gt 0 ] && [ ${#gpus[@]} -lt "$n" ]; then
  echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES lists ${#gpus[@]} GPUs for $n processes" >&2
  exit 2
fi
mkdir -p "$workdir"
pids=()
# Background processes of a script ignore SIGINT: pass Ctrl-C (and SIGTERM) on as SIGTERM.
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 143' INT TERM
for ((i = 0; i < n; i++)); do
  if [ "${JAX_PLATFORMS:-}" != cpu ]; then export CUDA_VISIBLE_DEVICES=${gpus[i]:-$i}; fi
  python -m resnet_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" \
    >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < n; i++)); do
  if ! wait -n; then
    kill -9 "${pids[@]}" 2>/dev/null || true   # checkpoints are atomic: the latest stays whole
    wait || true
    echo "a process failed, the others were stopped; see $workdir/process_*.log" >&2
    exit 1
  fi
done
