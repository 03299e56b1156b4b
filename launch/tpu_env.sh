#!/usr/bin/env bash
# Settings every launch/tpu_*.sh script reads. Edit them here, or override any of them in
# the environment (PROJECT=my-proj ZONE=us-central2-b launch/tpu_create.sh).
#
#   PROJECT           your Google Cloud project id
#   ZONE              a zone that offers ACCELERATOR_TYPE (see `gcloud compute tpus accelerator-types list`)
#   TPU_NAME          the VM (or pod slice) name
#   ACCELERATOR_TYPE  v5litepod-8 / v4-8 = one host; v4-32, v5litepod-16, ... = a pod slice (several hosts)
#   RUNTIME_VERSION   the TPU VM image (tpu-ubuntu2204-base works for JAX on v4 and v5e)
#   BUCKET            gs://bucket that holds the study directory, mounted on every worker
#   MOUNT             where the bucket is mounted on the workers (same path on every host)
#   SPOT              1: create a Spot VM (cheaper, can be preempted; the study resumes)
#   DRY_RUN           1: print every gcloud command instead of running it
#
# Sourced, not run: it only sets variables and the helper `run`.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file

PROJECT="${PROJECT:-my-gcp-project}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-cellvit-study}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
BUCKET="${BUCKET:-gs://my-bucket/cellvit}"
MOUNT="${MOUNT:-/mnt/cellvit}"
SPOT="${SPOT:-0}"
DRY_RUN="${DRY_RUN:-0}"
# The package is copied here (home directory of the ssh user) on every worker.
REMOTE_DIR="${REMOTE_DIR:-cellvit_jax}"

# Runs a command, or prints it (shell-quoted) when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# gcloud compute tpus tpu-vm ... with the project and zone filled in.
tpu_vm() {
  local verb="$1"
  shift
  run gcloud compute tpus tpu-vm "${verb}" "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" "$@"
}

# The same command on every worker of the VM (one host or all hosts of a pod slice).
on_all_workers() {
  tpu_vm ssh --worker=all --command="$1"
}
