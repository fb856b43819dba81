#!/usr/bin/env bash
# Installs and starts the container runtimes the tests and the demo need, on a fresh
# Debian machine: dockerd (API 1.41) and Podman's REST service. Idempotent: a runtime
# that already answers is left alone. Fails loudly when one does not come up.
set -euo pipefail

log() { echo "runtimes: $*" >&2; }
die() { echo "runtimes: FATAL: $*" >&2; exit 1; }

DOCKER_SOCK=/var/run/docker.sock
PODMAN_SOCK=/run/podman/podman.sock

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v podman >/dev/null || need_pkgs+=(podman)
command -v runc >/dev/null || need_pkgs+=(runc)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi

# Podman in this sandbox: cgroups v1 needs runc, and container ulimits must stay within
# the machine's hard limits or the OCI runtime refuses to start anything.
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

answers() { curl -sf --max-time 3 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }

if ! answers "$DOCKER_SOCK"; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do answers "$DOCKER_SOCK" && break; sleep 1; done
  answers "$DOCKER_SOCK" || { tail -20 /var/log/dockerd.log >&2; die "dockerd did not answer on $DOCKER_SOCK"; }
fi
log "docker answers on $DOCKER_SOCK"

if ! answers "$PODMAN_SOCK"; then
  log "starting podman system service"
  mkdir -p /run/podman
  nohup podman system service --time=0 "unix://$PODMAN_SOCK" >/var/log/podman-service.log 2>&1 &
  for _ in $(seq 1 60); do answers "$PODMAN_SOCK" && break; sleep 1; done
  answers "$PODMAN_SOCK" || { tail -20 /var/log/podman-service.log >&2; die "podman did not answer on $PODMAN_SOCK"; }
fi
log "podman answers on $PODMAN_SOCK"
