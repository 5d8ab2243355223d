// Package translate turns the networks of one Envoy node and the proxy settings into the Envoy
// resources cmd/xds serves: pure functions, no I/O, deterministic and sorted output.
//
// Per network (or router) it emits a listener on 169.254.169.254:80 and, when the network carries
// the interface that holds fe80::a9fe:a9fe, one on [fe80::a9fe:a9fe]:80, both bound in the network's
// namespace (SocketAddress.network_namespace_filepath). Every listener runs an HTTP connection
// manager that first removes the trace context a VM sends (an early header mutation, tracing.go),
// then an optional per-source-IP local rate limit, the ext_proc filter that asks cmd/extproc to
// resolve and sign the request, and the router. All listeners share one route configuration
// (RouteName) sending everything to the nova_metadata cluster; the extproc cluster points at
// cmd/extproc.
//
// Every message is validated (ValidateAll) before it is packed into a typed_config, because
// go-control-plane and Envoy's own checks do not look inside an Any before Envoy tries to load it.
//
// One file per Envoy feature: listener.go, hcm.go, extproc.go, ratelimit.go, route.go, cluster.go,
// tracing.go (Envoy's tracer, and the trace context VMs must not choose).
package translate
