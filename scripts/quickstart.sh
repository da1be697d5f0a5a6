#!/usr/bin/env bash
# Installs what sipstack needs, builds it, and brings the example platform up on
# this host: PostgreSQL, the schema, Kamailio and the media nodes (FreeSWITCH when it
# is installed, SIP stand-ins otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --locked -p sipctl -p sipstack-operator -p sipstack-cdrship
install -m 0755 target/debug/sipctl /usr/local/bin/sipctl
# the edges' call-record shipper, which the local driver runs next to each edge
install -m 0755 target/debug/sipstack-cdr-shipper /usr/local/bin/sipstack-cdr-shipper
sipctl local up -f "${1:-examples/platform.yaml}"
