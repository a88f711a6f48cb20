#!/usr/bin/env bash
# Run the same ftcot command on every worker of a Cloud TPU VM (docs/multihost.md).
#
#   bash scripts/launch_tpu_vm.sh NAME ZONE setup                  # install ftcot-jax[gcs] + jax[tpu] everywhere
#   bash scripts/launch_tpu_vm.sh NAME ZONE train --config run.yaml --run-dir gs://bucket/run \
#        --set distributed.enabled=true                            # same command on all workers
#   bash scripts/launch_tpu_vm.sh NAME ZONE stop                   # kill a running ftcot on every worker
#
# REPO_URL (default: this checkout's origin) and BRANCH (default: main) pick the code for `setup`.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
NAME=$1; ZONE=$2; ACTION=$3; shift 3
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url 2>/dev/null || echo "")}
BRANCH=${BRANCH:-main}

on_all() {  # one command on every worker, in parallel, output prefixed by worker
  gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"
}

case "$ACTION" in
  setup)
    [[ -n "$REPO_URL" ]] || { echo "set REPO_URL to the git URL of ftcot-jax" >&2; exit 2; }
    on_all "set -e; (test -d ftcot-jax || git clone -b $BRANCH $REPO_URL ftcot-jax); cd ftcot-jax && git pull -q;
            python3 -m venv ~/venv && . ~/venv/bin/activate && pip install -q -U pip &&
            pip install -q -e '.[gcs]' 'jax[tpu]' && python -c 'import jax; print(jax.process_index(), jax.device_count())'"
    ;;
  train)
    # Quote each argument for the remote shell; every worker gets the identical command line.
    args=$(printf ' %q' "$@")
    on_all ". ~/venv/bin/activate && cd ftcot-jax && ftcot train$args 2>&1 | tee -a ~/ftcot_train.log"
    ;;
  stop)
    on_all "pkill -INT -f 'ftcot train' || true"
    ;;
  *)
    echo "unknown action '$ACTION'; expected setup, train or stop" >&2; exit 2
    ;;
esac
