#!/usr/bin/env bash
# Installs the Debian packages the test suites need: the real OpenStack pieces (neutron-server,
# nova-api for its metadata API, keystone with uwsgi for neutron's auth_strategy = keystone, the
# incumbent neutron-metadata-agent with RabbitMQ and haproxy), cloud-init (its OpenStack metadata
# reader is an e2e client), iproute2, curl, openssl; and for the ML2/OVN suite (e2e/internal/ovnlab):
# Open vSwitch, OVN (central and host), the incumbent neutron-ovn-metadata-agent (its privsep helpers
# run through sudo), dhclient for OVN's DHCP in the VM namespaces, and iptables for the
# checksum-fill rule of the userspace datapath.
# Idempotent: does nothing when everything is there. Needs root.
set -euo pipefail
pkgs=(neutron-server neutron-metadata-agent nova-api keystone uwsgi uwsgi-plugin-python3 rabbitmq-server haproxy cloud-init iproute2 curl openssl wrk
      openvswitch-switch ovn-central ovn-host neutron-ovn-metadata-agent isc-dhcp-client iptables sudo)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "install-deps: all packages present"; exit 0; }
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root (or: sudo make deps)" >&2; exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The suites start every daemon themselves (on their own sockets and ports): keep the packages'
# services (RabbitMQ, Open vSwitch, OVN, the agents) from starting on install, as Debian's
# policy-rc.d convention allows. A machine that has its own policy-rc.d keeps it.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
