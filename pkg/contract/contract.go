// Package contract holds the names shared by the control plane (cmd/xds), which writes them into
// every listener's ext_proc filter, and the ext_proc service (cmd/extproc), which reads them on every
// stream, and the one rule both apply to network and router ids (ValidID). Both sides import them so
// that they cannot drift apart.
package contract

const (
	// NetworkIDMetadata is the gRPC initial-metadata key that carries the Neutron network id of the
	// listener (network mode, the listener lives in qdhcp-<network-id>).
	NetworkIDMetadata = "x-metaproxy-network-id"
	// RouterIDMetadata is the gRPC initial-metadata key that carries the Neutron router id of the
	// listener (router mode, the listener lives in qrouter-<router-id>).
	RouterIDMetadata = "x-metaproxy-router-id"

	// ExtProcAttributesKey is the key of ProcessingRequest.attributes under which Envoy's ext_proc
	// filter puts the request attributes it was asked for.
	ExtProcAttributesKey = "envoy.filters.http.ext_proc"
	// SourceAddressAttribute is the Envoy request attribute holding the downstream peer address,
	// "ip:port" (IPv6 as "[addr]:port"). It is the only source of the VM address.
	SourceAddressAttribute = "source.address"

	// NovaClusterName is the Envoy cluster that points at nova's metadata API.
	NovaClusterName = "nova_metadata"
	// ExtProcClusterName is the Envoy cluster that points at cmd/extproc.
	ExtProcClusterName = "extproc"

	// MetadataIPv4 and MetadataIPv6 are the addresses VMs ask for metadata.
	MetadataIPv4 = "169.254.169.254"
	MetadataIPv6 = "fe80::a9fe:a9fe"
	// MetadataPort is the port VMs ask for metadata on.
	MetadataPort = 80
)
