// Package ovnchassis is metaproxy's replacement for neutron-ovn-metadata-agent on an OVN chassis,
// minus the proxy (Envoy serves the namespaces, cmd/extproc signs): it keeps one ovnmeta-<network>
// namespace for every network that has a VM port bound to this chassis, and reports itself in the
// Southbound database the way the agent does, so that `openstack network agent list` stays true.
//
// Reconciler (one pass every interval, and at start): it asks Neutron which networks have VM ports
// bound to the chassis's host (binding:host_id) and their metadata ports (package ovnports), then
// makes the namespaces match (package ovnmeta): every wanted network provisioned (or adopted
// unchanged when it already is right, the agent's namespaces included), every other ovnmeta-<UUID>
// namespace torn down. A pass in which Neutron does not answer changes nothing. Before taking away
// every namespace because no VM port is bound to the host, the reconciler checks that Neutron has
// an ovn-controller agent of that host name, so that a wrong --host cannot empty a chassis.
//
// Reporter: the agent registers itself with external_ids:neutron:ovn-metadata-id on its chassis's
// Chassis_Private record (a uuid5 of the chassis name, set only if absent) and answers every
// SB_Global nb_cfg bump by copying it to external_ids:neutron:ovn-metadata-sb-cfg; neutron-server
// shows the "OVN Metadata agent" of the host alive while that value keeps up with nb_cfg
// (neutron/agent/ovn/metadata/agent.py, register_metadata_agent and SbGlobalUpdateEvent;
// neutron/plugins/ml2/drivers/ovn/agent/neutron_agent.py, MetadataAgent). The reporter does the
// same by polling, and names itself in neutron:description-metadata while it runs.
package ovnchassis
