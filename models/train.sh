#!/usr/bin/env bash
# Rebuilds every shipped model (deterministic: fixed seeds).
#  - payments / device_metrics: from the CSV examples in examples/.
#  - fraud / iot / security / quality: from 50,000 generated records of each
#    scenario (`isoflow gen`), replayed through the same feature code the
#    service runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ISOFLOW_BIN:-target/release}
"$bin/isoflow-train" fit --input examples/payments.csv --features models/payments.toml \
  --out models/payments.isoflow --name payments --seed 0 --contamination 0.01
"$bin/isoflow-train" fit --input examples/device_metrics.csv --features models/device_metrics.toml \
  --out models/device_metrics.isoflow --name device_metrics --seed 0 --contamination 0.01
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Expected anomaly share per scenario sets each model's threshold.
declare -A contamination=([fraud]=0.01 [iot]=0.01 [security]=0.01 [quality]=0.002)
for scenario in fraud iot security quality; do
  "$bin/isoflow" gen --scenario "$scenario" --count 50000 --seed 7 --out "$tmp/$scenario.jsonl"
  "$bin/isoflow-train" fit --input "$tmp/$scenario.jsonl" --features "models/$scenario.toml" \
    --out "models/$scenario.isoflow" --name "$scenario" --seed 0 --contamination "${contamination[$scenario]}"
done
