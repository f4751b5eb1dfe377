#!/usr/bin/env bash
# Start an interactive Run:ai workspace with the training image and the same volume, e.g. to
# prepare the data (scripts/download_fineweb_edu.py, scripts/create_mds.py) or inspect runs.
#
#   runai/spinup_workspace.sh [--dry-run] [name]
#
# name defaults to $USER-prefix-ws (made Kubernetes-safe). The container idles (sleep infinity)
# until you attach: `runai workspace bash <name> -p $RUNAI_PROJECT`. Same settings as
# runai/submit_train.sh (RUNAI_PROJECT, RUNAI_IMAGE, RUNAI_PVC, RUNAI_MOUNT, RUNAI_WORKDIR,
# RUNAI_EXTRA_ARGS; HF_TOKEN from the secret RUNAI_HF_SECRET, none if that is empty, or in plain
# text with RUNAI_HF_TOKEN_PLAINTEXT=1, never printed) except the GPU count:
#   RUNAI_WS_GPUS  GPUs of the workspace                  (0: data preparation needs CPUs only)
set -euo pipefail

# shellcheck source=runai/submit_train.sh
source "$(dirname "${BASH_SOURCE[0]}")/submit_train.sh"
RUNAI_WS_GPUS=${RUNAI_WS_GPUS:-0}

DRY_RUN=0
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown option $1 (options: --dry-run, --help)" ;;
    esac
    shift
done
[[ $# -le 1 ]] || die "usage: runai/spinup_workspace.sh [--dry-run] [name]"

require_runai
common_flags "$RUNAI_WS_GPUS"
token_flags
run_runai workspace submit "$(job_name "${1:-${USER:-user}-prefix-ws}")" "${COMMON[@]}" "${TOKEN[@]}" \
    --command -- sleep infinity
