#!/usr/bin/env bash
# Data-parallel tuning over N cards (or N CPU worker processes) with msrun.
#
#   tools/launch_train.sh --workers N --config CONFIG [--master-port P] [--log-dir DIR]
#                         [--nodes K --node-rank R --master-addr A] [key=value ...]
#
# Each worker runs tools/train.py on its share of every batch (worker r of N
# draws sample r of an N-sample batch), gradients are averaged, and worker 0
# alone writes checkpoints, samples, the tuned UNet and train.log. msrun writes
# each worker's log to LOG_DIR/worker_<rank>.log. On a multi-node cluster run
# this on every node with the same --nodes, --master-addr and --master-port
# and that node's --node-rank. The exit status is non-zero if any worker
# fails, and the failing workers' log tails are printed.
set -uo pipefail

# usage: the comment block above; exit status 0 when asked for (--help), 2 after a mistake
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
# the value of an option, or a usage error when it is missing
value() { [ -n "${2:-}" ] && [[ "$2" != --* ]] || { echo "$(basename "$0"): $1 needs a value" >&2; usage; }; }

workers="" config="" port=8118 log_dir="" nodes=1 node_rank=0 master_addr=127.0.0.1
overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) value "$1" "${2:-}"; workers="$2"; shift 2 ;;
        --config) value "$1" "${2:-}"; config="$2"; shift 2 ;;
        --master-port) value "$1" "${2:-}"; port="$2"; shift 2 ;;
        --log-dir) value "$1" "${2:-}"; log_dir="$2"; shift 2 ;;
        --nodes) value "$1" "${2:-}"; nodes="$2"; shift 2 ;;
        --node-rank) value "$1" "${2:-}"; node_rank="$2"; shift 2 ;;
        --master-addr) value "$1" "${2:-}"; master_addr="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        --*) echo "launch_train.sh: unknown option $1" >&2; usage ;;
        *) overrides+=("$1"); shift ;;
    esac
done
[ -n "$workers" ] && [ -n "$config" ] || { echo "launch_train.sh: --workers and --config are required" >&2; usage; }
[[ "$workers" =~ ^[1-9][0-9]*$ && "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "launch_train.sh: --workers and --nodes must be positive integers" >&2; exit 2; }
[ -f "$config" ] || { echo "launch_train.sh: config not found: $config" >&2; exit 2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
log_dir="${log_dir:-msrun_log/train-$(date +%Y%m%d-%H%M%S)}"
# msrun starts workers with the first `python` on PATH: make it this environment's
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PATH="$(dirname "$python"):$PATH"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
msrun=(msrun)
command -v msrun >/dev/null || msrun=("$python" -m mindspore.parallel.cluster.run)

cmd=("${msrun[@]}" --worker_num=$((workers * nodes)) --local_worker_num="$workers" --master_addr="$master_addr"
     --master_port="$port" --node_rank="$node_rank" --log_dir="$log_dir" --join=True
     "$repo/tools/train.py" --config "$config" "${overrides[@]}")
echo "launch_train.sh: ${cmd[*]}"
"${cmd[@]}"
status=$?
if [ $status -ne 0 ]; then
    echo "launch_train.sh: msrun exited with status $status" >&2
    failed=$(grep -l "Traceback" "$log_dir"/worker_*.log 2>/dev/null)
    for log in ${failed:-"$log_dir"/worker_*.log}; do
        [ -f "$log" ] || continue
        echo "----- last 30 lines of $log -----" >&2
        tail -n 30 "$log" >&2
    done
    exit $status
fi
echo "launch_train.sh: all $((workers * nodes)) workers finished; logs in $log_dir"
