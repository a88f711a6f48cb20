#!/usr/bin/env bash
# The paper's open-student grid (configs/paper/reference.yaml, 297 cells: 9 students x 12 tasks x
# {ft, ft_cot, diverse}) on Cloud TPU VMs, or locally on a GPU/TPU machine. Each cell is one
# `ftcot run ... --paper-cell STUDENT/TASK/METHOD` into runs/paper/<cell>; finished cells are skipped on a
# rerun (stage hashes), an interrupted cell resumes from its last checkpoint.
#
#   bash scripts/launch_tpu_vm_grid.sh local [SHARD NUM_SHARDS] [KEY=VALUE ...]    # here: cells i with i % N == SHARD
#   bash scripts/launch_tpu_vm_grid.sh tpu NAME ZONE [SHARD NUM_SHARDS] [KEY=VALUE ...]
#   bash scripts/launch_tpu_vm_grid.sh report                                      # table + plots of every cell
#
# `tpu` runs the loop detached (nohup) on worker 0 of a single-host TPU VM (v4-8, v5litepod-8, ...:
# the students are at most 774M parameters); one VM per shard splits the grid. Install first with
# `bash scripts/launch_tpu_vm.sh NAME ZONE setup` (the trainer's launcher), and put the teacher's
# answers into teacher_cache/ (see configs/paper/reference.yaml: `ftcot cache import`).
# CONFIG (default configs/paper/reference.yaml) picks another base config; CELLS=a,b,c runs only those.
set -euo pipefail

CONFIG=${CONFIG:-configs/paper/reference.yaml}

usage() { sed -n '2,17p' "$0"; exit 2; }
[[ $# -ge 1 ]] || usage
MODE=$1; shift

shard_args() {  # SHARD NUM_SHARDS are optional leading integers
  SHARD=0; NUM=1
  if [[ $# -ge 2 && $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then SHARD=$1; NUM=$2; fi
  (( SHARD < NUM )) || { echo "SHARD ($SHARD) must be < NUM_SHARDS ($NUM)" >&2; exit 2; }
}

run_local() {
  shard_args "$@"
  if [[ $# -ge 2 && $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then shift 2; fi
  local cells
  if [[ -n "${CELLS:-}" ]]; then cells=$(tr ',' '\n' <<<"$CELLS")
  else cells=$(ftcot run "$CONFIG" --list-paper-cells | awk -v s="$SHARD" -v n="$NUM" '(NR - 1) % n == s')
  fi
  local failed=0 n=0
  for cell in $cells; do
    n=$((n + 1))
    echo "=== [$n] $cell ($(date -u +%H:%M:%S))"
    if ! ftcot run --paper-cell "$cell" "$CONFIG" "$@"; then
      echo "=== FAILED: $cell (rerun the same command to resume it)" >&2
      failed=$((failed + 1))
    fi
  done
  echo "=== $n cells, $failed failed"
  [[ $failed -eq 0 ]]
}

case "$MODE" in
  local)
    run_local "$@"
    ;;
  tpu)
    [[ $# -ge 2 ]] || usage
    NAME=$1; ZONE=$2; shift 2
    args=$(printf ' %q' "$@")
    log="grid_$(date -u +%Y%m%dT%H%M%S).log"
    gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=0 --command \
      ". ~/venv/bin/activate && cd ftcot-jax && CONFIG=$(printf %q "$CONFIG") CELLS=$(printf %q "${CELLS:-}") \
       nohup bash scripts/launch_tpu_vm_grid.sh local$args > ~/$log 2>&1 < /dev/null & echo started: ~/$log"
    ;;
  report)
    mapfile -t dirs < <(find runs/paper -name stages.json -printf '%h\n' | sort)
    [[ ${#dirs[@]} -gt 0 ]] || { echo "no finished cells under runs/paper" >&2; exit 1; }
    ftcot report "${dirs[@]}" --out runs/paper/report
    ;;
  *)
    usage
    ;;
esac
