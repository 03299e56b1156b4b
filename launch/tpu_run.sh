#!/usr/bin/env bash
# Runs the same `python -m cellvit_jax.main ARGS` on every worker, with jax.distributed
# (CELLVIT_DISTRIBUTED=1: on Cloud TPU jax.distributed.initialize() finds its peers), so a
# pod slice trains each study cell data-parallel over all its chips (study.parallel=data).
# Relative --workdir paths are taken inside MOUNT, the bucket every worker sees.
#   launch/tpu_run.sh --config=configs/study.py --workdir=study
#   launch/tpu_run.sh --config=configs/study.py --workdir=study --config.study.seeds="(0,)"
# The ssh session ends when the command does; the study resumes if you run it again.
set -euo pipefail
# shellcheck source=launch/tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

if [[ $# -eq 0 ]]; then
  echo "usage: launch/tpu_run.sh --config=configs/<x>.py [--workdir=DIR] [--config.key=value ...]" >&2
  exit 2
fi
args=()
for arg in "$@"; do
  if [[ "${arg}" == --workdir=* && "${arg#--workdir=}" != /* ]]; then
    arg="--workdir=${MOUNT}/${arg#--workdir=}"
  fi
  args+=("$(printf '%q' "${arg}")")
done
# Datasets stay on each worker's own disk (~/tensorflow_datasets): the embedded ones are
# built there by each worker identically, and no two hosts write one dataset at once.
on_all_workers "cd ${REMOTE_DIR} && CELLVIT_DISTRIBUTED=1 python3 -m cellvit_jax.main ${args[*]}"
