#!/usr/bin/env bash
# Submit one training run to Run:ai as a (preemptible) training workload.
#
#   runai/submit_train.sh [--dry-run] yamls/<variant>.yaml [key=value ...]
#
# The job runs `python -m prefix_composer.runtime.launcher -n $RUNAI_GPUS train.py yamls/<variant>.yaml [key=value ...]`
# (Composer's launcher that forwards SIGTERM to the ranks, docs/preemption.md) in
# $RUNAI_IMAGE, from $RUNAI_WORKDIR (the repository inside the image), with the persistent volume
# claim $RUNAI_PVC mounted at $RUNAI_MOUNT (the YAMLs keep data under /mnt/data and runs under
# /mnt/runs). The job name is the run name (the YAML stem, or a run_name=... override) made
# Kubernetes-safe, so resubmitting the same YAML after a preemption or failure resumes from
# /mnt/runs/<run_name>/checkpoints (autoresume: true in every YAML).
#
# HF_TOKEN is passed from your environment into the container and never printed: the echoed and
# --dry-run commands show "HF_TOKEN=$HF_TOKEN". It is required when the YAML's tokenizer is a hub id.
#
# Settings (environment variables, with defaults):
#   RUNAI_PROJECT  Run:ai project                         (prefix-composer)
#   RUNAI_IMAGE    image with this repo and its uv env   (prefix-composer:latest)
#   RUNAI_PVC      existing PVC with data and runs        (prefix-composer-pvc)
#   RUNAI_MOUNT    where the PVC is mounted               (/mnt)
#   RUNAI_WORKDIR  repository root inside the image       (/workspace/prefix-composer)
#   RUNAI_GPUS     GPUs of the single node                (8)
#   RUNAI_EXTRA_ARGS  extra runai flags, word-split       (empty), e.g. "--node-pools h100"
#
# This file also holds the helpers that runai/spinup_workspace.sh sources.

RUNAI_PROJECT=${RUNAI_PROJECT:-prefix-composer}
RUNAI_IMAGE=${RUNAI_IMAGE:-prefix-composer:latest}
RUNAI_PVC=${RUNAI_PVC:-prefix-composer-pvc}
RUNAI_MOUNT=${RUNAI_MOUNT:-/mnt}
RUNAI_WORKDIR=${RUNAI_WORKDIR:-/workspace/prefix-composer}
RUNAI_GPUS=${RUNAI_GPUS:-8}
RUNAI_EXTRA_ARGS=${RUNAI_EXTRA_ARGS:-}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
    echo "error: $*" >&2
    exit 2
}

# Kubernetes-safe workload name: lowercase [a-z0-9-], starts with a letter, at most 63 characters.
job_name() {
    local name
    name=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9-' '-' | tr -s '-')
    name=${name#-}
    [[ $name =~ ^[a-z] ]] || name="run-$name"
    name=${name:0:63}
    name=${name%-}
    [[ -n $name ]] || die "cannot make a job name from '$1'"
    printf '%s' "$name"
}

# Flags shared by training jobs and workspaces (GPU count as $1): project, image, GPUs, volume,
# working dir, HF_TOKEN, extra flags. Sets the array COMMON.
common_flags() {
    [[ $1 =~ ^[0-9]+$ ]] || die "GPU count must be a non-negative integer, got '$1'"
    COMMON=(-p "$RUNAI_PROJECT" -i "$RUNAI_IMAGE" --gpu-devices-request "$1"
        --existing-pvc "claimname=$RUNAI_PVC,path=$RUNAI_MOUNT" --working-dir "$RUNAI_WORKDIR")
    if [[ -n ${HF_TOKEN:-} ]]; then
        COMMON+=(-e "HF_TOKEN=$HF_TOKEN")
    fi
    # shellcheck disable=SC2206  # word-splitting is the documented behaviour
    COMMON+=($RUNAI_EXTRA_ARGS)
}

# Print a command line, shell-quoted where needed, with the token shown as "HF_TOKEN=$HF_TOKEN"
# (copy-pasteable, never the value).
print_masked() {
    local arg out=()
    for arg in "$@"; do
        if [[ $arg == HF_TOKEN=* ]]; then
            out+=('"HF_TOKEN=$HF_TOKEN"')
        elif [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            out+=("$arg")
        else
            out+=("$(printf '%q' "$arg")")
        fi
    done
    echo "${out[*]}"
}

# Run (or with DRY_RUN=1 only print) a runai command.
run_runai() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        print_masked runai "$@"
        return 0
    fi
    command -v runai >/dev/null || die "the runai CLI is not on PATH (install it, then 'runai login')"
    print_masked runai "$@" >&2
    runai "$@"
}

# The tokenizer a run will use: a tokenizer.name=... override, else `name:` under `tokenizer:`.
tokenizer_name() {
    local yaml=$1 override
    shift
    for override in "$@"; do
        [[ $override == tokenizer.name=* ]] && { printf '%s' "${override#tokenizer.name=}"; return; }
    done
    awk '/^tokenizer:/ {inside=1; next} /^[^ #]/ {inside=0}
         inside && /^  name:/ {sub(/^  name:[ \t]*/, ""); sub(/[ \t]+#.*$/, ""); gsub(/["\047]/, ""); print; exit}' "$yaml"
}

# A hub id looks like org/name; local folders start with / or . and llama3_packaged ships offline.
is_hub_tokenizer() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$ ]]
}

submit_train_main() {
    DRY_RUN=0
    while [[ $# -gt 0 && $1 == -* ]]; do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
            *) die "unknown option $1 (options: --dry-run, --help)" ;;
        esac
        shift
    done
    [[ $# -ge 1 ]] || die "usage: runai/submit_train.sh [--dry-run] yamls/<variant>.yaml [key=value ...]"
    local yaml=$1
    shift
    [[ -f $yaml ]] || die "no such YAML: $yaml"
    local abs rel
    abs=$(cd "$(dirname "$yaml")" && pwd)/$(basename "$yaml")
    [[ $abs == "$REPO_ROOT"/* ]] || die "$yaml is outside the repository; the job reads it from the image at $RUNAI_WORKDIR"
    rel=${abs#"$REPO_ROOT"/}

    local override run_name
    run_name=$(basename "$yaml" .yaml)
    for override in "$@"; do
        [[ $override == *=* ]] || die "override '$override' is not key=value"
        [[ $override == run_name=* ]] && run_name=${override#run_name=}
    done

    local tokenizer
    tokenizer=$(tokenizer_name "$yaml" "$@")
    if is_hub_tokenizer "$tokenizer" && [[ -z ${HF_TOKEN:-} ]]; then
        die "tokenizer '$tokenizer' comes from the Hugging Face hub (gated): export HF_TOKEN first"
    fi
    [[ $RUNAI_GPUS =~ ^[1-9][0-9]*$ ]] || die "RUNAI_GPUS must be a positive integer, got '$RUNAI_GPUS'"

    common_flags "$RUNAI_GPUS"
    run_runai training submit "$(job_name "$run_name")" "${COMMON[@]}" \
        --command -- python -m prefix_composer.runtime.launcher -n "$RUNAI_GPUS" train.py "$rel" "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    submit_train_main "$@"
fi
