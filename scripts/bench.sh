#!/usr/bin/env bash
# The benchmarks (issue 5): context-engines against the physical limit of this machine.
# Sets up dockerd and Podman (scripts/runtimes.sh) and the test images
# (scripts/fixtures.sh), makes the 1 GiB image archive once (cached in target/bench),
# builds in the release profile and runs ce-bench: the table goes to stdout, the JSON to
# bench-results/latest.json, the plugin's logs to bench-results/latest.log.
# Knobs: `target/release/ce-bench --help` (flags after `--`, or CE_BENCH_* variables),
# e.g. `scripts/bench.sh --only 1,3 --start-runs 5`. Loopback only; about 20 minutes on
# 2 cores with the defaults.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/runtimes.sh
bash scripts/fixtures.sh

# Section 6 (the default runs it) needs the two-node swarm: brought up only when it is
# asked for (so `--only 1,3` runs on a dockerd out of swarm mode), and taken down
# however the run ends.
only=${CE_BENCH_ONLY:-1,2,3,4,5,6}
prev=
for arg in "$@"; do
  case $arg in --only=*) only=${arg#--only=} ;; esac
  [ "$prev" = --only ] && only=$arg
  prev=$arg
done
swarm=0
case ",$only," in *,6,*) swarm=1 ;; esac
work=
trap 'rm -rf "${work:-/nonexistent}"; [ "$swarm" = 1 ] && bash scripts/swarm.sh down; true' EXIT

# A docker-save archive of about 1 GiB holding incompressible data: a rootfs with one
# 1 GiB file of random bytes, imported into dockerd and saved, then removed from dockerd.
big=target/bench/big-1g.tar
if [ ! -s "$big" ]; then
  echo "bench: making $big (once)" >&2
  mkdir -p target/bench
  work=$(mktemp -d -p target/bench)
  mkdir -p "$work/rootfs"
  head -c 1073741824 /dev/urandom > "$work/rootfs/blob"
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  rm -f "$work/rootfs/blob"
  docker import "$work/rootfs.tar" ce-bench/big:1 >/dev/null
  rm -f "$work/rootfs.tar"
  docker save -o "$work/big.tar" ce-bench/big:1
  docker rmi ce-bench/big:1 >/dev/null
  mv "$work/big.tar" "$big"
fi

[ "$swarm" = 1 ] && bash scripts/swarm.sh up

cargo build --release --locked -p context-engines -p ce-tests --bin context-engines --bin ce-bench
mkdir -p bench-results
start=$(date +%s)
target/release/ce-bench "$@" 2> bench-results/latest.log
echo "bench: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; plugin logs in bench-results/latest.log" >&2
