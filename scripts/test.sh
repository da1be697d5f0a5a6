#!/usr/bin/env bash
# Installs what the tests need and runs every test: unit tests, CRD drift check,
# the validation of the chart and manifests (scripts/validate-manifests.sh), and the
# integration tests against real Kamailio, PostgreSQL and SIPp.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --workspace --all-targets --locked
# the Helm chart, the CRDs and the operator's objects against Kubernetes' schemas (no cluster)
timeout 900 ./scripts/validate-manifests.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
