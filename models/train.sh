#!/usr/bin/env bash
# Rebuilds the example models from examples/ (deterministic: fixed seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
train=${ISOFLOW_TRAIN:-target/release/isoflow-train}
"$train" fit --input examples/payments.csv --features models/payments.toml \
  --out models/payments.isoflow --name payments --seed 0 --contamination 0.01
"$train" fit --input examples/device_metrics.csv --features models/device_metrics.toml \
  --out models/device_metrics.isoflow --name device_metrics --seed 0 --contamination 0.01
