#!/usr/bin/env bash
# Fuzzes the plugin's decoders with libFuzzer (cargo-fuzz layout in fuzz/), each target for
# a bounded time, and fails on the first crash, leak or timeout.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 20 s, all targets
#
# Targets: action (the /action body and its params, Model and image path), config (the
# /config params, applied as the endpoint applies them), event (websocket frames applied
# to the reconciler). Seeds are in fuzz/seeds/<target>; what a run learns is kept in
# fuzz/corpus/<target> and a crashing input is written to fuzz/artifacts/<target>/.
#
# Longer runs, e.g. an hour per target on both cores:
#   scripts/fuzz.sh 3600
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run event corpus/event seeds/event -- \
#       -dict=dicts/json.dict -max_total_time=3600 -jobs=2 -workers=2
# Reproduce a crash:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET artifacts/TARGET/crash-…
#
# Only stable Rust is on these machines. cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, and the
# stable toolchain ships the AddressSanitizer runtime. The build is its own cargo
# workspace with its own target dir (fuzz/target), instrumented for coverage.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(action config event)
case "$seconds" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$seconds'" >&2; exit 2;; esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# 16 codegen units: a much quicker build of the large dependency tree (wasmtime), for a
# little fuzzing speed.
build=(--codegen-units 16)
cargo fuzz build "${build[@]}"

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a runaway allocation.
  if ! cargo fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" -- \
      -dict=dicts/json.dict -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 2> "target/fuzz-$target.log"; then
    tail -40 "target/fuzz-$target.log" >&2
    failed+=("$target")
    continue
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "target/fuzz-$target.log" \
    | sed "s/^/fuzz: $target: /" >&2 || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash" >&2
