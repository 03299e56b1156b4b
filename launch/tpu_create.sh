#!/usr/bin/env bash
# Creates the TPU VM (one host) or pod slice (several hosts) named in tpu_env.sh.
#   launch/tpu_create.sh                                    # ACCELERATOR_TYPE from tpu_env.sh
#   ACCELERATOR_TYPE=v4-32 TPU_NAME=cellvit-pod launch/tpu_create.sh   # a 4-host pod slice
set -euo pipefail
# shellcheck source=launch/tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

extra=()
if [[ "${SPOT}" == "1" ]]; then
  extra+=(--spot)
fi
tpu_vm create --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" "${extra[@]}"
