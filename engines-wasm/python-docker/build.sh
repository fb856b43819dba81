#!/usr/bin/env bash
# Builds the python-docker engine into engines-wasm/target/engines/python-docker.wasm.
#
# 1. a project-local virtualenv (.venv here) made with the machine's python3, holding
#    componentize-py pinned in requirements.txt (from PyPI; nothing else is downloaded:
#    componentize-py's wheel carries CPython for WebAssembly and its standard library);
# 2. the unit tests of the pure part (docker_api.py) on the machine's python3;
# 3. componentize-py: generates the bindings of the world
#    context-engines:engine/engine@0.2.0 from ../../wit, runs app.py once, and snapshots
#    the interpreter into a component.
#
# Idempotent: an existing, working .venv is reused; every run rebuilds the component.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
out_dir="$(cd "$here/.." && pwd)/target/engines"
out="$out_dir/python-docker.wasm"
venv="$here/.venv"
world="context-engines:engine/engine@0.2.0"

die() {
    echo "python-docker/build.sh: $*" >&2
    exit 1
}

command -v python3 >/dev/null 2>&1 ||
    die "python3 is missing: install CPython 3.10 or later (Debian: apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "python3 is $(python3 --version 2>&1); 3.10 or later is needed"

# A .venv whose interpreter is gone (python3 upgraded or moved) is made anew.
if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
    echo "python-docker/build.sh: $venv is broken or has no pip; recreating it" >&2
    rm -rf "$venv"
fi
if [ ! -d "$venv" ]; then
    python3 -m venv "$venv" ||
        die "python3 -m venv failed: the venv module or ensurepip (pip) is missing (Debian: apt-get install python3-venv python3-pip)"
fi
"$venv/bin/python" -m pip --version >/dev/null 2>&1 ||
    die "pip is missing from $venv (Debian: apt-get install python3-pip python3-venv, then delete $venv)"

# Quiet when already satisfied; a changed pin in requirements.txt is installed.
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt" ||
    die "pip install -r requirements.txt failed (PyPI must be reachable)"

cd "$here"
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" -m unittest -q test_docker_api || die "the unit tests of docker_api.py failed"

mkdir -p "$out_dir"
# Built beside the target and moved into place, so a failed build never leaves a
# truncated component where the host and the tests load it.
"$venv/bin/componentize-py" -d "$wit" -w "$world" componentize app -p "$here" -o "$out.tmp" ||
    die "componentize-py failed"

# A component starts with "\0asm" then version 0x0d 0x00 and layer 0x01 0x00.
magic="$(head -c 8 "$out.tmp" | od -An -tx1 | tr -d ' \n')"
[ "$magic" = "0061736d0d000100" ] || die "$out.tmp is not a WebAssembly component (header $magic)"
mv "$out.tmp" "$out"
ls -l "$out"
