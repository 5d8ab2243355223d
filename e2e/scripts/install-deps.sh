#!/usr/bin/env bash
# Installs the Debian packages the test suites need: the real OpenStack pieces (neutron-server,
# nova-api for its metadata API, the incumbent neutron-metadata-agent with RabbitMQ and haproxy),
# cloud-init (its OpenStack metadata reader is an e2e client), iproute2, curl, openssl.
# Idempotent: does nothing when everything is there. Needs root.
set -euo pipefail
pkgs=(neutron-server neutron-metadata-agent nova-api rabbitmq-server haproxy cloud-init iproute2 curl openssl wrk)
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
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
