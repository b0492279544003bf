#!/usr/bin/env bash
# Many clips at once: one independent tuning + editing job per config, N at a
# time, one per card (or CPU process).
#
#   tools/launch_edit.sh --workers N --configs CONFIG... [--log-dir DIR] [key=value ...]
#   tools/launch_edit.sh --workers N --config-list FILE [--log-dir DIR] [key=value ...]
#
# Each job runs tools/train.py on its config (tuning, then the config's
# validation prompts as the edits) with DEVICE_ID set to its slot, writing to
# the config's own output_dir and to LOG_DIR/<index>-<config name>.log; key=value
# settings apply to every job. A failing clip is reported and does not stop
# the others; a summary table lists each clip, its status, time and (for configs
# that set validation_data.clip_model_path) the mean metrics of its last
# validation. The exit status is non-zero if any clip failed.
set -uo pipefail

# usage: the comment block above; exit status 0 when asked for (--help), 2 after a mistake
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
# the value of an option, or a usage error when it is missing
value() { [ -n "${2:-}" ] && [[ "$2" != --* ]] || { echo "$(basename "$0"): $1 needs a value" >&2; usage; }; }

workers="" log_dir=""
configs=() overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) value "$1" "${2:-}"; workers="$2"; shift 2 ;;
        --log-dir) value "$1" "${2:-}"; log_dir="$2"; shift 2 ;;
        --config-list)
            [ -f "$2" ] || { echo "launch_edit.sh: config list not found: $2" >&2; exit 2; }
            while read -r line; do [ -n "$line" ] && [ "${line:0:1}" != "#" ] && configs+=("$line"); done < "$2"
            shift 2 ;;
        --configs)
            shift
            while [ $# -gt 0 ] && [[ "$1" != --* ]] && [[ "$1" != *=* ]]; do configs+=("$1"); shift; done ;;
        -h|--help) usage 0 ;;
        --*) echo "launch_edit.sh: unknown option $1" >&2; usage ;;
        *) overrides+=("$1"); shift ;;
    esac
done
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || { echo "launch_edit.sh: --workers must be a positive integer" >&2; usage; }
[ ${#configs[@]} -gt 0 ] || { echo "launch_edit.sh: no configs given" >&2; usage; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
# each clip's output_dir, one per line; two clips in one output_dir would overwrite each other's
# checkpoints, samples and unet/
output_dirs=$("$python" - "$repo" "${#configs[@]}" "${configs[@]}" "${overrides[@]}" <<'PY'
import os, sys
sys.path.insert(0, sys.argv[1])
from tuneavideo_ms.config import load_config
count = int(sys.argv[2])
configs, overrides, seen = sys.argv[3:3 + count], sys.argv[3 + count:], {}
for path in configs:
    try:
        out = os.path.realpath(load_config(path, overrides).output_dir)
    except (ValueError, OSError):
        print()
        continue  # that clip's job fails with its config's own message
    if out in seen:
        sys.exit(f"launch_edit.sh: {seen[out]} and {path} both write to {out}; give each clip its own output_dir")
    seen[out] = path
    print(out)
PY
) || exit 2
mapfile -t outputs <<< "$output_dirs"
log_dir="${log_dir:-msrun_log/edit-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$log_dir"
names=() logs=()
for i in "${!configs[@]}"; do
    names+=("$(basename "${configs[$i]%.*}")")
    logs+=("$log_dir/$i-${names[$i]}")
done

# A compile cache folder per card: the jobs of one card run one after another and reuse its graphs; two jobs
# at once never write the same graph's folder.
graphs="${TUNEAVIDEO_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneavideo_ms/graphs}"
cache_of() {
    if [ "${graphs,,}" = "off" ]; then echo off; else echo "$graphs/card-$1"; fi
}

run_job() {
    local i=$1 slot=$2 start status
    start=$(date +%s)
    DEVICE_ID=$slot TUNEAVIDEO_COMPILE_CACHE="$(cache_of "$slot")" \
        "$python" "$repo/tools/train.py" --config "${configs[$i]}" "${overrides[@]}" > "${logs[$i]}.log" 2>&1
    status=$?
    echo "$status $(( $(date +%s) - start ))" > "${logs[$i]}.status"
    if [ $status -eq 0 ]; then
        echo "launch_edit.sh: ${names[$i]} done"
    else
        { echo "launch_edit.sh: ${names[$i]} FAILED, last lines of ${logs[$i]}.log:"; tail -n 5 "${logs[$i]}.log"; } >&2
    fi
}

echo "launch_edit.sh: ${#configs[@]} clips on $workers workers; logs in $log_dir"
# each job takes the first free slot (card); a clip that fails early frees its slot at once
slot_pid=()
for i in "${!configs[@]}"; do
    while :; do
        for ((slot = 0; slot < workers; slot++)); do
            pid="${slot_pid[$slot]:-}"
            if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break 2; fi
        done
        wait -n
    done
    run_job "$i" "$slot" &
    slot_pid[$slot]=$!
done
wait

# the benchmark's metrics of a clip's last validation (samples/metrics.json, written when the config sets
# validation_data.clip_model_path): "frame consistency | text alignment | PickScore", "-" where absent
scores() {
    "$python" - "$1/samples/metrics.json" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as f:
        record = json.load(f)
    mean = record[max(record, key=int)]["mean"]
except (OSError, ValueError, KeyError):
    mean = {}
print(" | ".join(f"{mean[k]:.2f}" if k in mean else "-"
                 for k in ("frame_consistency", "text_alignment", "pick_score")))
PY
}

failed=0
printf '\n| clip | status | seconds | frame consistency | text alignment | PickScore | config |\n'
printf '|---|---|---|---|---|---|---|\n'
for i in "${!configs[@]}"; do
    read -r status seconds < "${logs[$i]}.status" 2>/dev/null || { status=missing; seconds=-; }
    if [ "$status" = 0 ]; then label=ok; else label="FAILED ($status)"; failed=$((failed + 1)); fi
    printf '| %s | %s | %s | %s | %s |\n' "${names[$i]}" "$label" "$seconds" "$(scores "${outputs[$i]:-}")" \
        "${configs[$i]}"
done
if [ $failed -gt 0 ]; then
    echo "launch_edit.sh: $failed of ${#configs[@]} clips failed" >&2
    exit 1
fi
