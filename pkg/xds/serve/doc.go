// Package serve hands the translated resources to Envoy: one go-control-plane snapshot per node,
// checked for consistency and versioned per resource type by a hash of its content, served over ADS
// (state of the world and delta) by a gRPC server with keepalives, and refreshed by a poll loop
// over a source. A poll costs what changed: unchanged nodes nothing, a network's listeners are
// built once for every node that serves it, and resources are kept and sent in their encoded form.
//
// A node gets a snapshot only once the source named it (before, its Envoy keeps what it runs);
// listeners an Envoy rejects are pushed again with back-off (Snapshots, and the gate that keeps
// state of the world from answering a NACK with what it rejected); what is kept for nodes the
// source does not know is dropped when they disconnect. Callbacks log and count ACKs, NACKs (with
// Envoy's error detail and the networks it names) and connected nodes, and refuse Envoys older
// than MinEnvoyVersion.
package serve
