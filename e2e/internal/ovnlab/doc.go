//go:build e2e

// Package ovnlab runs the whole ML2/OVN metadata path on one machine for the end-to-end suite, as
// the project's shared/openstack/ovn/real-ovn.sh recipe verified it: Open vSwitch with the userspace (netdev)
// datapath (no kernel module), OVN's Northbound and Southbound databases, ovn-northd and
// ovn-controller registering one chassis, neutron-server with ML2/OVN and nova's metadata API (from
// e2e/internal/openstack), optionally the real neutron-ovn-metadata-agent, and VMs: network
// namespaces plugged into br-int like nova plugs a VIF, which get their address and the route to
// 169.254.169.254 from OVN's own DHCP (dhclient).
//
// Everything lives under one base directory (databases and sockets under run/, logs under log/);
// every daemon runs in the foreground in its own process group (openstack.StartProcess), so that it
// is stopped with the lab or reaped by the next run after a crash. Namespaces are recorded with
// e2e/internal/vmnet. What the agent starts outside its process group (haproxy, privsep helpers) is
// found by the lab's base directory in its command line.
//
// Only one netdev ovs-vswitchd may run on a host, and the lab's names are fixed (br-int, the
// chassis): Start waits until no other lab runs (a flock on /run/metaproxy-e2e/ovnlab.lock, held
// until Close), so the test binaries of one `go test ./e2e/...` take turns; other suites that use
// the host's namespaces hold the suite's lock (flock /tmp/metaproxy-e2e.lock). Needs root, ~1 GB of
// memory and the packages e2e/scripts/install-deps.sh installs.
//
// Pitfalls it handles (from the recipe): TCP checksums are filled in by an iptables rule in the VM
// namespaces (the userspace datapath and veths leave them partial; the agent, and xds chassis, add
// the same rule in ovnmeta namespaces); the ovn mechanism driver binds a port only once neutron
// sees the ovn-controller agent alive, with Chassis.hostname equal to binding:host_id; the first
// port can fail while neutron's NB connection does not see the neutron_pg_drop port group yet
// (retried); ovs-vswitchd leaves its tap devices unless told `exit --cleanup`.
package ovnlab
