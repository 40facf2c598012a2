#!/usr/bin/env bash
# Create a TPU VM slice, install resnet_jax on every worker, train, and delete the slice.
#
#   launch/tpu_pod.sh create NAME ZONE ACCELERATOR [VERSION]     e.g. v5p-64 or v4-32
#   launch/tpu_pod.sh queue NAME ZONE ACCELERATOR [VERSION]      a spot queued resource instead
#   launch/tpu_pod.sh install NAME ZONE REPO_URL                 your clone of resnet_jax
#   launch/tpu_pod.sh train NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh stop NAME ZONE
#
# `train` runs the same command on every worker (--worker=all) with --distributed, so that
# jax.distributed.initialize() finds the pod by itself (from the TPU VM's metadata server).
# WORKDIR must be a path all workers share (a gcsfuse-mounted bucket or a Filestore share;
# gs:// URLs themselves are not supported yet): orbax writes checkpoints from every host.
# Preemptible/spot slices get SIGTERM before they are taken: the trainer saves a checkpoint and
# exits 0; run `train` again to resume. `install` puts Python 3.11 (the package needs it; the
# Ubuntu 22.04 images have 3.10) and resnet_jax in ~/.venvs/resnet_jax on every worker, with uv.
set -euo pipefail
usage() { sed -n '/^set -euo/q; 2,$p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
cmd=$1; name=$2; zone=$3; shift 3
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }
case "$cmd" in
  create)
    [ $# -ge 1 ] || usage
    gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$1" \
      --version="${2:-tpu-ubuntu2204-base}"
    ;;
  queue)
    [ $# -ge 1 ] || usage
    gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
      --accelerator-type="$1" --runtime-version="${2:-tpu-ubuntu2204-base}" --spot
    ;;
  install)
    [ $# -ge 1 ] || usage
    repo=$1
    ssh_all "set -e; python3 -m pip install -q --user uv; \
      [ -x ~/.venvs/resnet_jax/bin/python ] || ~/.local/bin/uv venv -q -p 3.11 ~/.venvs/resnet_jax; \
      git clone $repo resnet_jax 2>/dev/null || git -C resnet_jax pull; cd resnet_jax; \
      ~/.local/bin/uv pip install -q -p ~/.venvs/resnet_jax/bin/python -c constraints.txt -e . 'jax[tpu]'"
    ;;
  train)
    [ $# -ge 2 ] || usage
    config=$1; workdir=$2; shift 2
    # Each argument quoted for the remote shell: an override such as "--config.x=(28,28,1)" whole.
    ssh_all "cd resnet_jax && PATH=~/.venvs/resnet_jax/bin:\$PATH python -m resnet_jax.main --distributed$(printf ' %q' \
      "--config=$config" "--workdir=$workdir" "$@")"
    ;;
  stop)
    gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet 2>/dev/null \
      || gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
    ;;
  *) echo "unknown command '$cmd'" >&2; usage ;;
esac
