#!/usr/bin/env bash
# Copies this checkout to every worker, installs it with JAX for TPU, and mounts BUCKET at
# MOUNT (gcsfuse) so all hosts read and write one study directory.
#   launch/tpu_install.sh
set -euo pipefail
# shellcheck source=launch/tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The committed tree only (no runs, no datasets): what `git archive` packs.
tarball="$(mktemp -d)/cellvit_jax.tar.gz"
run git -C "${repo}" archive --format=tar.gz --prefix="${REMOTE_DIR}/" -o "${tarball}" HEAD
run gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:cellvit_jax.tar.gz" --worker=all \
  --project="${PROJECT}" --zone="${ZONE}"

jax_version="$(sed -n 's/^JAX_VERSION = "\([0-9.]*\)".*/\1/p' "${repo}/setup.py")"
if [[ -z "${jax_version}" ]]; then
  echo "error: no JAX_VERSION = \"x.y.z\" line in ${repo}/setup.py; the TPU VM must get the jax version the package pins" >&2
  exit 2
fi
bucket_path="${BUCKET#gs://}"
bucket_name="${bucket_path%%/*}"
only_dir=""
if [[ "${bucket_path}" == */* ]]; then
  only_dir="--only-dir=${bucket_path#*/}"
fi
on_all_workers "set -e
rm -rf ${REMOTE_DIR} && tar xzf cellvit_jax.tar.gz
python3 -m pip install --quiet 'jax[tpu]==${jax_version}' -e ./${REMOTE_DIR}
if ! command -v gcsfuse >/dev/null; then
  echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p ${MOUNT} && sudo chown \$(id -u):\$(id -g) ${MOUNT}
mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs ${only_dir} ${bucket_name} ${MOUNT}
python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
