// Package serve hands the translated resources to Envoy: one go-control-plane snapshot per node,
// checked with Consistent() and versioned by a hash of its content, served over ADS (state of the
// world and delta) by a gRPC server with keepalives, and refreshed by a poll loop over a source.
//
// A node gets a snapshot only once the source named it (before, its Envoy keeps what it runs);
// listeners an Envoy rejects are pushed again with back-off (Snapshots, and the gate that keeps
// state of the world from answering a NACK with what it rejected); what is kept for nodes the
// source does not know is dropped when they disconnect. Callbacks log and count ACKs, NACKs (with
// Envoy's error detail and the networks it names) and connected nodes, and refuse Envoys older
// than MinEnvoyVersion.
package serve
