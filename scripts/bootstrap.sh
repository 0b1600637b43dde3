#!/usr/bin/env bash
# Install whatever the testbed needs that is missing, and nothing else. Safe to run again:
# a second run only checks, and finishes in a few seconds.
#   1. Debian packages (Mininet, Open vSwitch, tools the tests and benchmarks drive)
#   2. the project venv (.venv, from Debian's python3 so Mininet imports) with pinned dependencies
#   3. a running Open vSwitch (userspace datapath: no kernel module is needed)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

APT_PACKAGES=(
  mininet openvswitch-switch openvswitch-common
  ethtool iproute2 iputils-ping iputils-arping curl socat procps psmisc nftables
  python3 python3-venv python3-dev python3-pip gcc
  tshark haproxy wrk iperf3
)

[ "$(id -u)" -eq 0 ] || die "must run as root (Mininet and Open vSwitch need it): try 'sudo make ${MAKE_TARGET:-test}'"
[ -r /etc/debian_version ] || die "this bootstrap supports Debian 12 (bookworm); install the packages by hand elsewhere: ${APT_PACKAGES[*]}"

# --- 1. Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer it so no prompt appears.
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -qq || die "apt-get update failed: check the machine's package sources"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
    || die "apt-get could not install: ${missing[*]}"
else
  say "Debian packages: all present"
fi

# --- 2. the venv --------------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  say "creating the venv at .venv (Debian's /usr/bin/python3, --system-site-packages for Mininet)"
  /usr/bin/python3 -m venv --system-site-packages "$venv" || die "could not create the venv"
fi
stamp="$venv/.requirements.sha256"
want=$(cat "$here/requirements.txt" "$here/setup.py" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned Python dependencies into .venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" </dev/null \
    || die "pip could not install requirements.txt"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$here" </dev/null \
    || die "pip could not install the project itself"
  echo "$want" >"$stamp"
else
  say "venv: up to date"
fi
"$venv/bin/python" -c 'import mininet.net, os_ken, pyroute2, scapy' \
  || die "the venv cannot import mininet/os_ken/pyroute2/scapy; remove .venv and run again"

# --- 3. Open vSwitch ----------------------------------------------------------------------------
if ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
  say "Open vSwitch: running"
else
  say "starting Open vSwitch (userspace datapath; a ulimit warning from ovs-ctl is harmless)"
  /usr/share/openvswitch/scripts/ovs-ctl start >/dev/null 2>&1 || true
  ovs-vsctl --timeout=10 show >/dev/null 2>&1 || die "Open vSwitch did not start: see /var/log/openvswitch/"
fi
say "ready"
