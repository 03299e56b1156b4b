#!/usr/bin/env bash
# Copies a study directory from the bucket to this machine (checkpoints left behind:
# results, blur and cost files are what the report reads), then writes the report.
#   launch/tpu_fetch.sh study            # BUCKET/study -> ./study, then ./study/report/
set -euo pipefail
# shellcheck source=launch/tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

study="${1:?usage: launch/tpu_fetch.sh STUDY_DIR (relative to the bucket, e.g. study)}"
run gcloud storage rsync --recursive --exclude='.*/checkpoints/.*' \
  "${BUCKET}/${study}" "./${study}"
run python -m cellvit_jax.experiments.report --study_dir="./${study}"
