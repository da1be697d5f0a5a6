#!/usr/bin/env bash
# Installs what the tests need and runs every test: unit tests, CRD drift check,
# and the integration tests against real Kamailio, PostgreSQL and SIPp.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
