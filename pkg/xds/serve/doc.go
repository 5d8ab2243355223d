// Package serve hands the translated resources to Envoy: one go-control-plane snapshot per node,
// checked with Consistent() and versioned by a hash of its content, served over ADS (state of the
// world and delta) by a gRPC server with keepalives, and refreshed by a poll loop over a source.
//
// Callbacks log and count ACKs, NACKs (with Envoy's error detail) and connected nodes.
package serve
