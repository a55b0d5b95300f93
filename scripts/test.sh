#!/usr/bin/env bash
# Installs what the tests need (only what is missing), then runs formatting,
# lint and the whole test suite in release mode (accuracy and GPU parity
# tests are compute-heavy; debug builds would crawl on software Vulkan).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# Software Vulkan (Mesa lavapipe) so GPU tests run on a real Vulkan driver.
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
ldconfig -p | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
# plotters renders text through fontconfig/freetype.
pkg-config --exists fontconfig 2>/dev/null || need_apt+=(libfontconfig1-dev pkg-config)
ls /usr/share/fonts/truetype/dejavu >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The Kafka-protocol broker for end-to-end tests (tansu 0.6.0): reuse one
# on PATH or in ~/.cargo/bin, build it there only when missing.
TANSU=${ISOFLOW_TANSU:-$(command -v tansu || true)}
[ -z "$TANSU" ] && [ -x "$HOME/.cargo/bin/tansu" ] && TANSU="$HOME/.cargo/bin/tansu"
if [ -z "$TANSU" ]; then
  echo "installing tansu 0.6.0 (first run only; takes a while)"
  cargo install --locked tansu --version 0.6.0 --features dynostore,libsql
  TANSU="$HOME/.cargo/bin/tansu"
fi
export ISOFLOW_TANSU="$TANSU"

# Apache Kafka 4.x (KRaft, one node on loopback), from Maven with the
# machine's Java: the end-to-end tests that use a broker run against it as
# well as tansu. Fetched into tools/kafka/ only when missing.
ISOFLOW_KAFKA_LIBS=$(scripts/kafka.sh)
export ISOFLOW_KAFKA_LIBS

# A Python gRPC client generated from proto/ is part of the API tests.
if ! python3 -c "import grpc, grpc_tools" 2>/dev/null; then
  python3 -m pip install -q grpcio grpcio-tools
fi
export ISOFLOW_REQUIRE_PYTHON_GRPC=1

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Alone, the detector crate builds without its `gpu` feature (a workspace
# build turns it on for the service), and the trainer builds on that.
cargo clippy --release -p isoflow-core -p isoflow-train --all-targets -- -D warnings
# Every public item is documented and every doc link resolves.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
# The end-to-end tests run the `isoflow` and `isoflow-train` binaries of the
# other workspace crates; cargo builds a package's binaries only for that
# package's own tests, so build them all first.
cargo build --release --workspace --bins
# Benches run once in test mode, on small inputs.
ISOFLOW_BENCH_ROWS=${ISOFLOW_BENCH_ROWS:-2000} cargo test --release --workspace --all-targets --no-fail-fast
# The tests that run a broker, again against Apache Kafka (the reference
# for behaviour; tansu has quirks, see DESIGN.md).
ISOFLOW_BROKER=kafka cargo test --release --test integration -- grpc:: \
  streaming::every_record hundred_thousand poison_pill offset_reset kafka_properties given_up \
  learning_pipelines feedback_topic start_up_errors trains_on_a_topics bench_pipeline tabular_rows \
  state::
# Every fuzz target for a bounded time (ISOFLOW_FUZZ_SECONDS each).
scripts/fuzz.sh "${ISOFLOW_FUZZ_SECONDS:-30}"
