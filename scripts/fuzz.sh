#!/usr/bin/env bash
# Fuzzes the plugin's decoders with libFuzzer (cargo-fuzz layout in fuzz/), each target for
# a bounded time, and fails on the first crash, failed check or hang.
#
#   scripts/fuzz.sh [--thorough] [SECONDS_PER_TARGET] [TARGET...]   default: 20 s, all
#
# Targets: action (the /action body and its params, Model and image path), config (the
# /config params, applied as the endpoint applies them), event (websocket frames applied
# to the reconciler). Seeds are in fuzz/seeds/<target>; what a run learns is kept in
# fuzz/corpus/<target>, and a failing input is written to fuzz/artifacts/<target>/.
#
# Two builds:
#   default      unoptimized, coverage-instrumented, no sanitizer: about 3 minutes cold
#                on 2 cores, 10,000-25,000 inputs/s. What scripts/test.sh runs (20 s per
#                target). The targets check panics and their own invariants, which need
#                no sanitizer; the plugin has no unsafe code of its own.
#   --thorough   optimized, with AddressSanitizer (for unsafe code in dependencies) and
#                16 codegen units: about 20 minutes cold. For long runs, e.g. an hour per
#                target:  scripts/fuzz.sh --thorough 3600
# Both cores on one target:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run event corpus/event seeds/event -- \
#       -dict=dicts/json.dict -max_total_time=3600 -jobs=2 -workers=2
# Reproduce a failure:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run [--dev -s none] TARGET artifacts/TARGET/crash-…
#
# Only stable Rust is on these machines. cargo-fuzz passes nightly-only flags to rustc;
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. The build is its own cargo
# workspace with its own target dir (fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
build=(--dev --sanitizer none)
if [ "${1:-}" = "--thorough" ]; then
  build=(--release --codegen-units 16)
  shift
fi
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(action config event)
case "$seconds" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$seconds'" >&2; exit 2;; esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
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
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "target/fuzz-$target.log")
  # A run that executed (nearly) nothing proves nothing: fail it loudly.
  if [ "${runs:-0}" -lt 1000 ]; then
    echo "fuzz: $target executed only ${runs:-0} inputs" >&2
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
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure" >&2
