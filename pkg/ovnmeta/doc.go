// Package ovnmeta provisions the ovnmeta-<network id> namespaces of an OVN chassis the way
// neutron-ovn-metadata-agent does (neutron/agent/ovn/metadata/agent.py, provision_datapath and
// teardown_datapath, neutron 21.0.0 / Zed), so that a metadata listener bound in the namespace is
// reachable from the network's VMs:
//
//   - the namespace ovnmeta-<network id> under the netns directory (created like `ip netns add`);
//   - a veth pair tap<network id[:10]>0 (host side) / tap<network id[:10]>1 (in the namespace), both
//     up; the inner end carries the metadata port's MAC (the network's device_owner
//     network:distributed port, a localport in OVN), its IPv4 addresses with their subnets' prefix
//     lengths and 169.254.169.254/32, and no other address;
//   - the host end is a port of the OVN bridge (br-int) with external_ids:iface-id = the metadata
//     port's id, so that ovn-controller binds the localport to it; it is taken off any other bridge;
//   - on a bridge with the userspace datapath (datapath_type=netdev), the rule
//     `-t mangle -A POSTROUTING -p tcp -m tcp -j CHECKSUM --checksum-fill` in the namespace, since
//     nothing else fills in the TCP checksums of packets leaving a veth there (LP#1904871).
//
// Teardown removes the OVS port, the veth pair and then the namespace if nothing but lo is left in
// it. Only namespaces named ovnmeta-<UUID> are ever considered; the package starts no proxy: a
// metadata listener (Envoy, from cmd/xds) binds 169.254.169.254:80 in the namespace by itself.
package ovnmeta
