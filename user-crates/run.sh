#!/usr/bin/env bash
# Builds and runs user crates, each on its own (so that Burn's features are resolved per crate, as
# in an application), and fails if kd-losses emits a compiler warning in any of them.
#
#   bash user-crates/run.sh                 # every crate
#   bash user-crates/run.sh defaults        # the ones named
#
# `defaults` shares the main crate's test build (see its Cargo.toml), so it costs a minute after
# `cargo test --all-features`; `minimal` and `ndarray-only` each compile their own Burn.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}"
log="$CARGO_TARGET_DIR/user-crates-build.log"
mkdir -p "$CARGO_TARGET_DIR"
crates=("$@")
if [ ${#crates[@]} -eq 0 ]; then crates=(defaults minimal ndarray-only); fi
for crate in "${crates[@]}"; do
  echo "-- user crate '$crate': $(grep -E '^burn =' "$crate/Cargo.toml")"
  cargo build -p "$crate" 2>&1 | tee "$log" | grep -E "^(warning|error)" || true
  if grep -q "^error" "$log"; then echo "user crate $crate: build failed"; tail -n 40 "$log"; exit 1; fi
  if grep -qE "^warning: .kd-losses. \(lib\) generated" "$log"; then
    echo "user crate $crate: kd-losses emitted warnings"; exit 1
  fi
  cargo run -q -p "$crate"
done
echo "user crates: ${#crates[@]} built warning-free and ran (${crates[*]})"
