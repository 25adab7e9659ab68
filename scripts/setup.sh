#!/usr/bin/env bash
# Brings a fresh Debian 12 machine (as root) to a working state for Higgs.net:
# system packages (only those missing), a .venv with pinned dependencies, the package
# in editable mode. Idempotent; quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the programs, the lab and the tests need. dnsmasq-base: the lab's DNS
# server binary only -- the `dnsmasq` package would also start a resolver on the host.
SYSTEM_PACKAGES=(
  wireguard-go wireguard-tools nftables iptables iproute2 iperf3 curl
  dnsmasq-base procps kmod postgresql ca-certificates iputils-ping
  chromium chromium-driver conntrack miniupnpd-nftables natpmpc haproxy nats-server faketime
)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: run 'make setup' as root (or: apt-get install --no-install-recommends ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when the dependency declarations changed since the last install.
stamp=.venv/.higgs-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]'
  echo "$want" >"$stamp"
fi
echo "setup: ok"
