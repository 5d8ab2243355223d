//go:build e2e

// Package openstack runs a real, minimal OpenStack on loopback for the end-to-end suite: Debian's
// neutron-server (ML2, sqlite, the router service plugin; noauth over HTTP, or behind Debian's
// Keystone with keystonemiddleware, over TLS with the fixture's private CA) and nova's metadata API
// (nova-api with enabled_apis = metadata, sqlite, the shared secret), and optionally RabbitMQ with
// the incumbent neutron-metadata-agent. It creates networks and VMs the way Nova and the DHCP agent
// leave them: Neutron ports through the API with gophercloud, and nova instance rows through nova's
// own objects, so that nova itself judges every signed request; and, with Keystone, users, roles,
// application credentials and clouds.yaml entries the way an operator does.
//
// Everything lives under one base directory; every process runs in its own process group and is
// stopped (SIGTERM, then SIGKILL after a bound) by Close. Needs root and the Debian packages that
// e2e/scripts/install-deps.sh installs. It follows the recipe in the project's
// shared/openstack/README.md (schema from the models, api_workers = 1, warm-up with GET /v2.0/networks).
package openstack
