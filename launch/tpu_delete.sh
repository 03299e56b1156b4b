#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (the bucket and its study directory stay).
#   launch/tpu_delete.sh
set -euo pipefail
# shellcheck source=launch/tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

tpu_vm delete --quiet
