#!/usr/bin/env bash
# Quick start, part 1: the plugin under the bundled dr-provision simulator, with the
# Docker engine: a machine enters a Context, its agent container starts; it leaves, the
# agent goes. Installs and starts what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/runtimes.sh
bash scripts/fixtures.sh
bash engines-wasm/build.sh --rust-only
cargo build --release --locked -p context-engines -p ce-tests --bin context-engines --bin ce-demo
exec target/release/ce-demo
