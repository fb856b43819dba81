#!/usr/bin/env bash
# Builds every WebAssembly engine of this workspace in release for wasm32-wasip2 and
# copies each component to target/engines/<engine-name>.wasm (docker-api.wasm, null.wasm,
# spin.wasm, …), where the host embeds docker-api.wasm and null.wasm from and the tests
# load them all. rustc's wasm32-wasip2 cdylib output is already a component. Then the
# engine in a second language, python-docker.wasm (python-docker/build.sh: componentize-py
# in a project-local venv, from PyPI).
#
# Environment: CARGO_BUILD_JOBS (e.g. 1 on a busy machine) is honoured by cargo.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# legacy-docker is the frozen engine@0.1.0 fixture (see legacy-docker/src/lib.rs).
engines=(null docker-api spin hog trap slow forbidden sockets leaky future legacy-docker)

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

packages=()
for engine in "${engines[@]}"; do
    packages+=(-p "$engine")
done
cargo build --locked --release --target wasm32-wasip2 "${packages[@]}"

out="$here/target/engines"
mkdir -p "$out"
for engine in "${engines[@]}"; do
    built="$here/target/wasm32-wasip2/release/${engine//-/_}.wasm"
    # A component starts with "\0asm" then version 0x0d 0x00 and layer 0x01 0x00
    # (a core module has 0x01 0x00 0x00 0x00).
    magic="$(head -c 8 "$built" | od -An -tx1 | tr -d ' \n')"
    if [ "$magic" != "0061736d0d000100" ]; then
        echo "build.sh: $built is not a WebAssembly component (header $magic)" >&2
        exit 1
    fi
    cp "$built" "$out/$engine.wasm"
done
# `--rust-only` (the quick-start demo): the engines the host embeds, without PyPI.
if [ "${1:-}" != "--rust-only" ]; then
    bash "$here/python-docker/build.sh"
fi
ls -l "$out"
