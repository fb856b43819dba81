#!/usr/bin/env bash
# The two-node Docker Swarm the swarm engine's tests run against, on this one machine.
#
#   scripts/swarm.sh up      build it (idempotent: what already works is left alone)
#   scripts/swarm.sh down    take it apart (idempotent: succeeds when nothing is up)
#   scripts/swarm.sh status  say what is up; exit 0 only when the whole swarm is
#   scripts/swarm.sh check   run one swarm service on each node that calls back to the
#                            host (the end-to-end proof; `up` does not run it)
#   scripts/swarm.sh worker-kill   the worker node dies: SIGKILL to its dockerd and to
#                            everything running in its network namespace (its
#                            containerd, shims and host-network containers; a container
#                            with a network namespace of its own would outlive it)
#   scripts/swarm.sh worker-start  the worker comes back (same data root, so the same
#                            swarm node) and is Ready again
#
# Layout:
#   manager  the machine's dockerd (/var/run/docker.sock, the one scripts/runtimes.sh
#            starts), in the root network namespace, advertising 169.254.231.1.
#   worker   a second dockerd in the network namespace ce-swarm-worker, with its own
#            --data-root, --exec-root, --pidfile and socket, advertising 169.254.231.2.
#            Its Engine API is on unix:///run/ce-swarm-worker.sock and, for the host
#            (images are loaded into it over HTTP), on tcp://169.254.231.2:2375.
#   link     a veth pair: ce-swarm0 (root namespace) 169.254.231.1/30 <->
#            ce-swarm1 (inside ce-swarm-worker) 169.254.231.2/30.
#
# Why link-local (169.254.0.0/16, RFC 3927) addresses: they are never routed, so the
# swarm's control (2377/tcp), gossip (7946) and data (4789/udp VXLAN) traffic cannot leave
# the machine, and they cannot collide with eth0's network, docker0 (172.17/16), the
# swarm's default address pool (10/8) or docker_gwbridge (172.18/16). A /30 holds exactly
# the two ends. The test's simulator listens on 169.254.231.1 too: agents on the manager
# reach it as a local address, agents on the worker over the veth (host networking, or a
# bridge network NATed inside the namespace).
#
# What this sandbox's kernel lacks, and what that means (found empirically, see `check`):
#   * CONFIG_IP_VS is not set: swarm's routing mesh (ingress-published ports) and VIP
#     load balancing cannot work (a VIP does not answer; dockerd logs that
#     /proc/sys/net/ipv4/vs/* is missing). Swarm itself, the ingress network's creation
#     and tasks run fine. Services must use host networking, or an overlay network with
#     `--endpoint-mode dnsrr` (VXLAN works: CONFIG_VXLAN=y), and publish nothing
#     through the ingress network.
#   * CONFIG_INET_ESP / CONFIG_CRYPTO_GCM are not set: no encrypted overlay networks.
#   * No registry is reachable: images are loaded into each node (`docker load`), and
#     services name them by image id (sha256:…), which the swarm executor never tries
#     to pull (a name makes every task start with a failing pull attempt).
#
# Why the worker dockerd runs under `nsenter --net` and not `ip netns exec`: `ip netns
# exec` remounts /sys in a private mount namespace, and the new /sys has none of the
# cgroup v1 hierarchies mounted under /sys/fs/cgroup here (checked: `ip netns exec
# ce-swarm-worker ls /sys/fs/cgroup` is empty). Under nsenter the worker shares the root
# mount namespace: its overlay2 and netns mounts show up on the host, and `down`
# unmounts whatever a killed worker left behind before it removes the directories.
# (dockerd logs "enabling default vlan on bridge br0 failed ... default_pvid: permission
# denied" for each overlay network: CONFIG_BRIDGE_VLAN_FILTERING is not set; harmless,
# overlay networks across the two nodes work.)
#
# Why the worker dockerd runs through a symlink named ce-swarm-dockerd: tests/tests/
# faults.rs stops "dockerd" by `pidof dockerd` and waits until no such process is left;
# under its own name the worker is neither killed by that nor waited for.
#
# Why the worker gets its own UTS namespace (hostname ce-swarm-worker): both dockerds
# would otherwise report the hostname "vm"; swarm tolerates that (node ids differ), but
# distinct hostnames make `docker node ls`, constraints and failures readable.
#
# Every refusal of the kernel or the sandbox stops the script with a FATAL line naming
# the step and the kernel's words, and a non-zero exit.
set -euo pipefail

NS=ce-swarm-worker
HOST_IF=ce-swarm0
NS_IF=ce-swarm1
HOST_ADDR=169.254.231.1
NS_ADDR=169.254.231.2
PREFIX=30
WORKER_HOSTNAME=ce-swarm-worker
DATA_ROOT=/var/lib/ce-swarm-worker
EXEC_ROOT=/run/ce-swarm-worker
PIDFILE=/run/ce-swarm-worker.pid
WORKER_SOCK=/run/ce-swarm-worker.sock
WORKER_TCP=$NS_ADDR:2375
WORKER_LOG=/var/log/ce-swarm-worker.log
WORKER_BIN=$DATA_ROOT/bin/ce-swarm-dockerd
MANAGER_SOCK=/var/run/docker.sock
PROBE_IMAGE=ce-swarm/probe:1
NETNS_FILE=/run/netns/$NS

log() { echo "swarm: $*" >&2; }
die() { echo "swarm: FATAL: $*" >&2; exit 1; }

mgr() { docker -H "unix://$MANAGER_SOCK" "$@"; }
wrk() { docker -H "unix://$WORKER_SOCK" "$@"; }
in_ns() { nsenter --net="$NETNS_FILE" "$@"; }
answers() { curl -sf --max-time 3 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }
tcp_answers() { curl -sf --max-time 3 "http://$1/_ping" >/dev/null 2>&1; }
ns_exists() { [ -e "$NETNS_FILE" ] && ip netns list 2>/dev/null | grep -qw "^$NS"; }
swarm_state() { docker -H "unix://$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unreachable; }

# Runs "$@"; on failure dies naming the step and quoting what the command said.
try() { # what cmd...
  local what=$1 out
  shift
  out=$("$@" 2>&1) || die "$what refused: \`$*\` said: ${out:-<nothing>}"
  [ -z "$out" ] || echo "$out"
}

preflight() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, veth, a second dockerd)"
  local missing=()
  for cmd in ip nsenter unshare dockerd docker curl containerd runc; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ -x /bin/busybox ] || missing+=(/bin/busybox)
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (scripts/runtimes.sh installs them)"
  answers "$MANAGER_SOCK" || die "the manager dockerd does not answer on $MANAGER_SOCK (run scripts/runtimes.sh)"
}

# ------------------------------------------------------------------------ network
net_up() {
  if ! ns_exists; then
    try "creating the network namespace $NS (ip netns add; needs CAP_SYS_ADMIN and CONFIG_NET_NS)" \
      ip netns add "$NS" >/dev/null
  fi
  try "bringing up lo in $NS" ip -n "$NS" link set lo up >/dev/null
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    # A half-made pair (the namespace end alone) cannot be reused: start over.
    ip -n "$NS" link del "$NS_IF" >/dev/null 2>&1 || true
    try "creating the veth pair $HOST_IF/$NS_IF (needs CONFIG_VETH)" \
      ip link add "$HOST_IF" type veth peer name "$NS_IF" netns "$NS" >/dev/null
  fi
  ip -n "$NS" link show "$NS_IF" >/dev/null 2>&1 ||
    die "$HOST_IF exists but its peer $NS_IF is not in $NS (run: scripts/swarm.sh down)"
  ip -br addr show dev "$HOST_IF" | grep -qw "$HOST_ADDR/$PREFIX" ||
    try "addressing $HOST_IF" ip addr add "$HOST_ADDR/$PREFIX" dev "$HOST_IF" >/dev/null
  ip -n "$NS" -br addr show dev "$NS_IF" | grep -qw "$NS_ADDR/$PREFIX" ||
    try "addressing $NS_IF in $NS" ip -n "$NS" addr add "$NS_ADDR/$PREFIX" dev "$NS_IF" >/dev/null
  try "bringing up $HOST_IF" ip link set "$HOST_IF" up >/dev/null
  try "bringing up $NS_IF in $NS" ip -n "$NS" link set "$NS_IF" up >/dev/null
  # The worker's containers on bridge networks leave through the namespace's NAT, so
  # the namespace must forward (its own sysctl, not the root namespace's).
  try "enabling IPv4 forwarding in $NS" in_ns sysctl -qw net.ipv4.ip_forward=1 >/dev/null
  local i
  for i in $(seq 1 50); do
    in_ns busybox ping -c1 -W1 "$HOST_ADDR" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$NS cannot reach $HOST_ADDR over the veth pair (ip -n $NS addr: $(ip -n "$NS" -br addr | tr '\n' ' '))"
}

# ------------------------------------------------------------------------ worker dockerd
worker_pid() { # prints the worker's pid when the pidfile names a live ce-swarm-dockerd
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$WORKER_BIN" | cut -c1-15)" ] || return 1
  echo "$pid"
}

worker_up() {
  if answers "$WORKER_SOCK" && tcp_answers "$WORKER_TCP"; then
    return 0
  fi
  if worker_pid >/dev/null; then
    die "the worker dockerd runs (pid $(worker_pid)) but does not answer on $WORKER_SOCK and tcp://$WORKER_TCP (see $WORKER_LOG; run: scripts/swarm.sh down)"
  fi
  mkdir -p "$DATA_ROOT/bin" "$EXEC_ROOT" "$(dirname "$WORKER_LOG")"
  ln -sfn "$(command -v dockerd)" "$WORKER_BIN"
  rm -f "$WORKER_SOCK" "$PIDFILE"
  log "starting the worker dockerd in $NS (log: $WORKER_LOG)"
  # Same storage driver and cgroup driver as the manager (overlay2 on ext4, cgroupfs on
  # cgroup v1: dockerd's defaults here, as scripts/runtimes.sh starts it); iptables and
  # the docker0 bridge stay on, they act inside the namespace only. Its containers go in
  # their own cgroup parent. --tls=false said out loud skips dockerd's deliberate
  # start-up delay for a plain-TCP socket; the socket is on a link-local address that
  # only this machine can reach. Tasks never pull (no registry is reachable).
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 \
    nohup setsid nsenter --net="$NETNS_FILE" unshare --uts sh -c \
    'hostname "$0" && exec "$@"' "$WORKER_HOSTNAME" \
    "$WORKER_BIN" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    -H "unix://$WORKER_SOCK" \
    -H "tcp://$WORKER_TCP" --tls=false \
    --cgroup-parent /ce-swarm-worker \
    >>"$WORKER_LOG" 2>&1 </dev/null &
  local i
  for i in $(seq 1 120); do
    answers "$WORKER_SOCK" && break
    sleep 0.5
  done
  if ! answers "$WORKER_SOCK"; then
    tail -25 "$WORKER_LOG" >&2 || true
    die "the worker dockerd did not answer on $WORKER_SOCK within 60 s (log above: $WORKER_LOG)"
  fi
  tcp_answers "$WORKER_TCP" || die "the worker dockerd answers on $WORKER_SOCK but the host cannot reach tcp://$WORKER_TCP"
}

# ------------------------------------------------------------------------ checks
# A one-shot HTTP server on $HOST_ADDR in the root namespace, standing in for the
# simulator: prints its pid and port. busybox httpd serves $dir/probe.
start_callback_listener() { # dir
  local dir=$1 port pid i
  echo ce-swarm-probe >"$dir/probe"
  for port in $(shuf -i 20000-29999 -n 20); do
    busybox httpd -f -p "$HOST_ADDR:$port" -h "$dir" >/dev/null 2>&1 &
    pid=$!
    for i in $(seq 1 20); do
      curl -sf --max-time 1 "http://$HOST_ADDR:$port/probe" >/dev/null 2>&1 && { echo "$pid $port"; return 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  die "could not listen on $HOST_ADDR in the root namespace (busybox httpd)"
}

# The probe image: Debian's static busybox in an otherwise empty rootfs, as
# scripts/fixtures.sh builds the test images. Imported over the socket, then saved and
# loaded back over tcp://$WORKER_TCP, the way the engine loads images from the host.
probe_image_on_worker() {
  wrk image inspect "$PROBE_IMAGE" >/dev/null 2>&1 && return 0
  local work
  work=$(mktemp -d)
  mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  for applet in sh wget echo cat sleep hostname ip true; do
    ln -sf busybox "$work/rootfs/bin/$applet"
  done
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  try "importing $PROBE_IMAGE into the worker" wrk import "$work/rootfs.tar" "$PROBE_IMAGE" >/dev/null
  try "saving $PROBE_IMAGE from the worker" wrk save -o "$work/probe.tar" "$PROBE_IMAGE"
  try "removing $PROBE_IMAGE from the worker" wrk rmi "$PROBE_IMAGE" >/dev/null
  try "loading $PROBE_IMAGE into the worker over tcp://$WORKER_TCP" \
    curl -sf --max-time 60 -X POST -H 'Content-Type: application/x-tar' \
    --data-binary "@$work/probe.tar" "http://$WORKER_TCP/images/load?quiet=1" >/dev/null
  rm -rf "$work"
  wrk image inspect "$PROBE_IMAGE" >/dev/null 2>&1 || die "$PROBE_IMAGE is not on the worker after docker load"
}

worker_checks() {
  local dir listener pid port out
  dir=$(mktemp -d)
  listener=$(start_callback_listener "$dir")
  pid=${listener% *}
  port=${listener#* }
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null || true; rm -rf '$dir'" EXIT
  out=$(in_ns curl -sf --max-time 5 "http://$HOST_ADDR:$port/probe" 2>&1) ||
    die "from inside $NS, http://$HOST_ADDR:$port (root namespace) is unreachable: $out"
  probe_image_on_worker
  out=$(wrk run --rm --network host "$PROBE_IMAGE" wget -qO- "http://$HOST_ADDR:$port/probe" 2>&1) ||
    die "a host-network container on the worker could not reach http://$HOST_ADDR:$port: $out"
  [ "$out" = ce-swarm-probe ] || die "a host-network container on the worker got '$out' from the callback listener"
  out=$(wrk run --rm "$PROBE_IMAGE" wget -qO- "http://$HOST_ADDR:$port/probe" 2>&1) ||
    die "a bridge-network container on the worker could not reach http://$HOST_ADDR:$port: $out"
  [ "$out" = ce-swarm-probe ] || die "a bridge-network container on the worker got '$out' from the callback listener"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  trap - EXIT
  log "worker: Engine API on unix://$WORKER_SOCK and tcp://$WORKER_TCP; images load; host-network and bridge containers reach $HOST_ADDR"
}

# ------------------------------------------------------------------------ swarm
manager_up() {
  local state addr
  state=$(swarm_state "$MANAGER_SOCK")
  case $state in
    inactive)
      log "manager: docker swarm init --advertise-addr $HOST_ADDR"
      try "docker swarm init on the manager" \
        mgr swarm init --advertise-addr "$HOST_ADDR" --listen-addr "$HOST_ADDR:2377" >/dev/null
      ;;
    active)
      [ "$(mgr info --format '{{.Swarm.ControlAvailable}}')" = true ] ||
        die "the manager dockerd is a swarm worker of some other swarm (leave it first: docker swarm leave)"
      addr=$(mgr info --format '{{.Swarm.NodeAddr}}')
      [ "$addr" = "$HOST_ADDR" ] ||
        die "the manager dockerd already manages a swarm advertised on $addr, not $HOST_ADDR (not ours; leave it first)"
      ;;
    *) die "the manager dockerd's swarm state is '$state' (want inactive or active)" ;;
  esac
}

worker_join() {
  local state token
  state=$(swarm_state "$WORKER_SOCK")
  if [ "$state" = active ]; then
    # Joined already, to this manager (a worker's own info names no cluster: ask the
    # manager whether it knows the worker's node id).
    mgr node inspect "$(wrk info --format '{{.Swarm.NodeID}}')" >/dev/null 2>&1 && return 0
    log "worker: in a swarm this manager does not know; leaving it"
    wrk swarm leave --force >/dev/null 2>&1 || true
    state=$(swarm_state "$WORKER_SOCK")
  fi
  [ "$state" = inactive ] || die "the worker dockerd's swarm state is '$state' (want inactive)"
  forget_dead_workers
  token=$(mgr swarm join-token -q worker) || die "the manager gave no worker join token"
  log "worker: docker swarm join $HOST_ADDR:2377"
  try "docker swarm join on the worker" \
    wrk swarm join --token "$token" --advertise-addr "$NS_ADDR" --listen-addr "$NS_ADDR:2377" "$HOST_ADDR:2377" >/dev/null
}

# Worker nodes a previous run left Down (its dockerd died, or its data root went,
# without leaving): they would linger in `docker node ls` forever.
forget_dead_workers() {
  local id self
  self=$(wrk info --format '{{.Swarm.NodeID}}' 2>/dev/null || true)
  for id in $(mgr node ls --filter role=worker --format '{{.ID}} {{.Hostname}} {{.Status}}' 2>/dev/null |
    awk -v h="$WORKER_HOSTNAME" -v self="$self" '$2 == h && $3 == "Down" && $1 != self { print $1 }'); do
    log "manager: removing the dead worker node $id"
    mgr node rm --force "$id" >/dev/null 2>&1 || true
  done
}

# Ready means: the manager sees exactly two nodes, both Ready, one of them this worker
# dockerd's node (a dead predecessor stays "Ready" for a few heartbeats, then goes Down
# and is removed).
wait_nodes_ready() {
  local i self nodes ready=0
  self=$(wrk info --format '{{.Swarm.NodeID}}')
  [ -n "$self" ] || die "the worker dockerd reports no swarm node id after joining"
  for i in $(seq 1 60); do
    forget_dead_workers
    nodes=$(mgr node ls --format '{{.ID}} {{.Status}}')
    ready=$(grep -c ' Ready$' <<<"$nodes" || true)
    if [ "$(wc -l <<<"$nodes")" = 2 ] && [ "$ready" = 2 ] && grep -q "^$self Ready$" <<<"$nodes"; then
      break
    fi
    ready=0
    sleep 1
  done
  [ "$ready" = 2 ] || { mgr node ls >&2 || true; die "the swarm is not two Ready nodes (manager + $self) after 60 s"; }
  [ "$(mgr node ls --format '{{.Hostname}}' | sort -u | wc -l)" = 2 ] ||
    die "the swarm's two nodes do not have distinct hostnames"
}

print_nodes() {
  mgr node ls --format '{{.ID}}  {{.Hostname}}  {{.Status}}  {{.Availability}}  {{if .ManagerStatus}}manager({{.ManagerStatus}}){{else}}worker{{end}}'
}

# ------------------------------------------------------------------------ subcommands
# A node failure as the swarm sees one: no SIGTERM, so nothing leaves or stops cleanly.
cmd_worker_kill() {
  local pid p i
  [ "$(id -u)" = 0 ] || die "must run as root"
  pid=$(worker_pid) || die "no worker dockerd runs (scripts/swarm.sh up)"
  p=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
  log "worker: SIGKILL to dockerd (pid $pid) and to all in $NS: $p"
  # shellcheck disable=SC2086
  kill -KILL "$pid" $p 2>/dev/null || true
  for i in $(seq 1 40); do
    p=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
    [ -z "$p" ] && ! kill -0 "$pid" 2>/dev/null && break
    # shellcheck disable=SC2086
    { [ -n "$p" ] && kill -KILL $p 2>/dev/null; } || true
    sleep 0.25
  done
  [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] || die "processes survive SIGKILL in $NS: $(ip netns pids "$NS" | tr '\n' ' ')"
  rm -f "$WORKER_SOCK" "$PIDFILE"
  log "worker: dead"
}

cmd_worker_start() {
  preflight
  worker_up
  wait_nodes_ready
  log "worker: back and Ready"
}

cmd_up() {
  local t0=$SECONDS
  preflight
  net_up
  log "network: $HOST_IF $HOST_ADDR/$PREFIX <-> $NS:$NS_IF $NS_ADDR/$PREFIX"
  worker_up
  worker_checks
  manager_up
  worker_join
  wait_nodes_ready
  print_nodes
  log "up in $((SECONDS - t0)) s: manager unix://$MANAGER_SOCK ($HOST_ADDR), worker unix://$WORKER_SOCK and tcp://$WORKER_TCP ($NS_ADDR)"
}

cmd_down() {
  local t0=$SECONDS pid i p
  [ "$(id -u)" = 0 ] || die "must run as root"
  # 1. The worker leaves while its dockerd still runs.
  if answers "$WORKER_SOCK" && [ "$(swarm_state "$WORKER_SOCK")" != inactive ]; then
    log "worker: docker swarm leave --force"
    wrk swarm leave --force >/dev/null 2>&1 || log "worker: swarm leave failed (going on)"
  fi
  # 2. The manager leaves, but only our swarm (advertised on $HOST_ADDR).
  answers "$MANAGER_SOCK" ||
    log "WARNING: the manager dockerd does not answer on $MANAGER_SOCK: if it was in swarm mode, it still is when it comes back (run down again then)"
  if answers "$MANAGER_SOCK" && [ "$(swarm_state "$MANAGER_SOCK")" != inactive ]; then
    if [ "$(mgr info --format '{{.Swarm.NodeAddr}}' 2>/dev/null)" = "$HOST_ADDR" ]; then
      log "manager: docker swarm leave --force"
      try "docker swarm leave on the manager" mgr swarm leave --force >/dev/null
    else
      die "the manager dockerd is in a swarm not advertised on $HOST_ADDR: not ours, not leaving it"
    fi
  fi
  # Swarm mode leaves docker_gwbridge behind; out of swarm mode and unused it is litter.
  if answers "$MANAGER_SOCK" && [ "$(swarm_state "$MANAGER_SOCK")" = inactive ] &&
    mgr network inspect docker_gwbridge >/dev/null 2>&1; then
    if [ "$(mgr network inspect docker_gwbridge --format '{{len .Containers}}')" = 0 ]; then
      log "manager: removing docker_gwbridge"
      mgr network rm docker_gwbridge >/dev/null 2>&1 || log "manager: could not remove docker_gwbridge (going on)"
    fi
  fi
  # 3. The worker dockerd (it stops its containers and its containerd on SIGTERM).
  if pid=$(worker_pid); then
    log "worker: stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "worker: dockerd ignored SIGTERM for 30 s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # Whatever still runs in the namespace was started there by this script (containerd,
  # shims, containers): stop it by pid.
  if ns_exists; then
    for i in $(seq 1 20); do
      p=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
      [ -z "$p" ] && break
      [ "$i" = 1 ] && log "worker: stopping what is left in $NS: $p"
      # shellcheck disable=SC2086
      if [ "$i" -lt 10 ]; then kill -TERM $p 2>/dev/null || true; else kill -KILL $p 2>/dev/null || true; fi
      sleep 0.5
    done
    p=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
    [ -z "$p" ] || die "processes still run in $NS: $p"
  fi
  # 4. The link and the namespace (deleting one end of a veth deletes both).
  if ip link show "$HOST_IF" >/dev/null 2>&1; then
    try "deleting the veth $HOST_IF" ip link del "$HOST_IF" >/dev/null
  fi
  if ns_exists || [ -e "$NETNS_FILE" ]; then
    try "deleting the network namespace $NS" ip netns del "$NS" >/dev/null
  fi
  # 5. The worker's files. Its container mounts (overlay2, shm) must be gone first.
  if grep -qE " ($DATA_ROOT|$EXEC_ROOT)[/ ]" /proc/self/mountinfo; then
    grep -E " ($DATA_ROOT|$EXEC_ROOT)[/ ]" /proc/self/mountinfo | awk '{print $5}' | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  if [ "${KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$DATA_ROOT" "$EXEC_ROOT"
  fi
  rm -f "$WORKER_SOCK" "$PIDFILE"
  log "down in $((SECONDS - t0)) s"
}

cmd_status() {
  local ok=0 state
  if ns_exists; then echo "namespace: $NS"; else echo "namespace: none"; ok=1; fi
  if ip link show "$HOST_IF" >/dev/null 2>&1; then
    echo "veth: $(ip -br addr show dev "$HOST_IF" | awk '{print $1, $3}') <-> $(ip -n "$NS" -br addr show dev "$NS_IF" 2>/dev/null | awk '{print $1, $3}')"
  else
    echo "veth: none"
    ok=1
  fi
  if answers "$WORKER_SOCK"; then
    echo "worker dockerd: pid $(worker_pid || echo '?') on unix://$WORKER_SOCK$(tcp_answers "$WORKER_TCP" && echo " and tcp://$WORKER_TCP"), swarm $(swarm_state "$WORKER_SOCK")"
  else
    echo "worker dockerd: not answering"
    ok=1
  fi
  state=$(swarm_state "$MANAGER_SOCK")
  echo "manager dockerd: swarm $state$([ "$state" = active ] && echo " ($(mgr info --format '{{.Swarm.NodeAddr}}'), manager=$(mgr info --format '{{.Swarm.ControlAvailable}}'))")"
  if [ "$state" = active ] && [ "$(mgr info --format '{{.Swarm.ControlAvailable}}')" = true ]; then
    print_nodes | sed 's/^/  node: /'
    [ "$(mgr node ls --format '{{.Status}}' | grep -c '^Ready$' || true)" = 2 ] || ok=1
  else
    ok=1
  fi
  return $ok
}

# One swarm service per node, host networking, image by id (no pull), each calling the
# root namespace's $HOST_ADDR back and exiting 0 on success. Leaves nothing behind.
cmd_check() {
  local dir listener pid port id node svc state i rc=0 had_probe_on_mgr=1
  preflight
  cmd_status >/dev/null || die "the swarm is not up (scripts/swarm.sh up)"
  probe_image_on_worker
  id=$(wrk image inspect --format '{{.Id}}' "$PROBE_IMAGE")
  # The same image on the manager, loaded the same way (same id on both nodes).
  if ! mgr image inspect "$id" >/dev/null 2>&1; then
    had_probe_on_mgr=0
    wrk save "$PROBE_IMAGE" | mgr load -q >/dev/null || die "could not load $PROBE_IMAGE into the manager"
  fi
  dir=$(mktemp -d)
  listener=$(start_callback_listener "$dir")
  pid=${listener% *}
  port=${listener#* }
  for node in "$(hostname)" "$WORKER_HOSTNAME"; do
    svc=ce-swarm-check-$node
    mgr service rm "$svc" >/dev/null 2>&1 || true
    try "docker service create ($svc)" mgr service create --detach --quiet --name "$svc" \
      --no-resolve-image --network host --restart-condition none \
      --constraint "node.hostname==$node" \
      "$id" wget -qO- "http://$HOST_ADDR:$port/probe" >/dev/null
    state=
    for i in $(seq 1 60); do
      state=$(mgr service ps "$svc" --format '{{.CurrentState}}' 2>/dev/null | head -1 | awk '{print $1}')
      case $state in Complete | Failed | Rejected) break ;; esac
      sleep 0.5
    done
    if [ "$state" = Complete ]; then
      log "check: a swarm task on $node reached http://$HOST_ADDR:$port ($(mgr service ps "$svc" --format '{{.Node}} {{.CurrentState}}' | head -1))"
    else
      log "check: FAILED on $node: $(mgr service ps "$svc" --no-trunc --format '{{.Node}} {{.CurrentState}} {{.Error}}' | head -1)"
      rc=1
    fi
    mgr service rm "$svc" >/dev/null 2>&1 || true
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  # Task containers go with their service; the probe image leaves the manager again.
  for i in $(seq 1 20); do
    [ -z "$(mgr ps -aq --filter label=com.docker.swarm.service.name)" ] && break
    sleep 0.5
  done
  [ "$had_probe_on_mgr" = 1 ] || mgr rmi "$id" >/dev/null 2>&1 || log "check: could not remove $PROBE_IMAGE from the manager"
  [ "$rc" = 0 ] || die "check failed"
  log "check: passed"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  check) cmd_check ;;
  worker-kill) cmd_worker_kill ;;
  worker-start) cmd_worker_start ;;
  *) echo "usage: $0 up|down|status|check|worker-kill|worker-start" >&2; exit 2 ;;
esac
