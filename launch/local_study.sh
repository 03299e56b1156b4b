#!/usr/bin/env bash
# Runs a study on this machine with N worker processes (study.parallel=cells): worker k
# runs the cells i % N == k. With GPUs, worker k sees GPU k only; on CPU the workers share
# the cores. Then writes the report.
#   launch/local_study.sh 4 --config=configs/study.py --workdir=study
#   launch/local_study.sh 1 --config=configs/study_example.py --workdir=docs/example_study
# Each worker logs to WORKDIR/logs/worker<k>.log. Rerun the same command to resume.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local_study.sh NUM_WORKERS --config=configs/study.py --workdir=DIR [--config.key=value ...]" >&2
  exit 2
fi
workers="$1"
shift
workdir="study"
for arg in "$@"; do
  if [[ "${arg}" == --workdir=* ]]; then
    workdir="${arg#--workdir=}"
  fi
done
python="${PYTHON:-python}"
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus="$(nvidia-smi --list-gpus | wc -l)"
fi
mkdir -p "${workdir}/logs"

pids=()
for ((k = 0; k < workers; k++)); do
  env_args=("CELLVIT_WORKER=${k}/${workers}")
  if ((gpus > 0)); then
    env_args+=("CUDA_VISIBLE_DEVICES=$((k % gpus))")
  fi
  env "${env_args[@]}" "${python}" -m cellvit_jax.main "$@" --workdir="${workdir}" \
    --config.study.parallel=cells >"${workdir}/logs/worker${k}.log" 2>&1 &
  pids+=("$!")
done

failed=0
for k in "${!pids[@]}"; do
  if ! wait "${pids[${k}]}"; then
    echo "worker ${k}/${workers} failed; see ${workdir}/logs/worker${k}.log:" >&2
    tail -n 3 "${workdir}/logs/worker${k}.log" >&2
    failed=1
  fi
done
if ((failed)); then
  exit 1
fi
"${python}" -m cellvit_jax.experiments.report --study_dir="${workdir}"
