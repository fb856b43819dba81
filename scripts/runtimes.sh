#!/usr/bin/env bash
# Installs and starts the container runtimes the tests and the demo need, on a fresh
# Debian machine: dockerd (API 1.41) and Podman's REST service, each also exposed on a
# loopback TCP port (for the docker-api WASM engine, which speaks HTTP over TCP).
# Idempotent: a runtime that already answers is left alone. Fails loudly when one does
# not come up.
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
command -v socat >/dev/null || need_pkgs+=(socat)
# scripts/swarm.sh (the two-node swarm of tests/tests/swarm.rs): ip, nsenter, unshare.
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi
# Prometheus scrapes the plugin in tests/tests/metrics.rs (each test starts its own, on
# loopback); its recommends (node exporter and the like) are not needed.
if ! [ -x /usr/bin/prometheus ]; then
  log "installing prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
[ -x /usr/bin/prometheus ] || die "prometheus is not installed (/usr/bin/prometheus missing)"

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

# The Engine API on loopback TCP, for WASM engines (wasi:http has no unix sockets).
DOCKER_TCP=127.0.0.1:23750
PODMAN_TCP=127.0.0.1:23760
tcp_answers() { curl -sf --max-time 3 "http://$1/_ping" >/dev/null 2>&1; }
expose() { # sock addr
  tcp_answers "$2" && return 0
  nohup socat "TCP-LISTEN:${2##*:},bind=${2%%:*},fork,reuseaddr" "UNIX-CONNECT:$1" >/dev/null 2>&1 &
  for _ in $(seq 1 30); do tcp_answers "$2" && break; sleep 0.2; done
  tcp_answers "$2" || die "$1 is not reachable on tcp://$2"
}
expose "$DOCKER_SOCK" "$DOCKER_TCP"
expose "$PODMAN_SOCK" "$PODMAN_TCP"
log "docker on tcp://$DOCKER_TCP, podman on tcp://$PODMAN_TCP"
