package translate

import (
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// OTelCollectorClusterName is the cluster Envoy sends its spans to when EnvoyTracing is on.
const OTelCollectorClusterName = "otel_collector"

// openTelemetryTracerName is the name of Envoy's OpenTelemetry tracer extension.
const openTelemetryTracerName = "envoy.tracers.opentelemetry"

// earlyHeaderMutationName is Envoy's early header mutation extension that applies HeaderMutation
// entries (source/extensions/http/early_header_mutation/header_mutation).
const earlyHeaderMutationName = "envoy.http.early_header_mutation.header_mutation"

// EnvoyTracing turns on Envoy's own OpenTelemetry tracing: every listener's HTTP connection manager
// starts (or continues) a trace per request, its ext_proc client span carries the trace context to
// cmd/extproc, and the spans go over OTLP/gRPC to Collector, the collector cmd/extproc and cmd/xds
// export to. Off when Collector is empty (the default).
type EnvoyTracing struct {
	// Collector is HOST:PORT of an OTLP/gRPC collector (plain text), e.g. 127.0.0.1:4317.
	Collector string
	// ServiceName is the service.name of Envoy's spans ("metaproxy-envoy" when empty).
	ServiceName string
}

// Enabled reports whether Envoy traces.
func (e EnvoyTracing) Enabled() bool { return e.Collector != "" }

func (e EnvoyTracing) validate() error {
	if !e.Enabled() {
		return nil
	}
	host, port, err := net.SplitHostPort(e.Collector)
	if err != nil {
		return fmt.Errorf("envoy tracing collector %q: want HOST:PORT: %w", e.Collector, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || host == "" {
		return fmt.Errorf("envoy tracing collector %q: want HOST:PORT", e.Collector)
	}
	return nil
}

// hcmTracing returns the HTTP connection manager's tracing configuration (nil when off).
func hcmTracing(e EnvoyTracing) (*hcmv3.HttpConnectionManager_Tracing, error) {
	if !e.Enabled() {
		return nil, nil
	}
	name := e.ServiceName
	if name == "" {
		name = "metaproxy-envoy"
	}
	cfg, err := pack(&tracev3.OpenTelemetryConfig{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: OTelCollectorClusterName}},
			Timeout:         durationpb.New(time.Second),
		},
		ServiceName: name,
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpConnectionManager_Tracing{
		Provider: &tracev3.Tracing_Http{Name: openTelemetryTracerName, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: cfg}},
	}, nil
}

// OTelCollectorCluster returns the cluster of the OTLP/gRPC collector (HTTP/2, DNS resolved when
// the host is a name), or nil when tracing is off.
func OTelCollectorCluster(e EnvoyTracing) (*clusterv3.Cluster, error) {
	if !e.Enabled() {
		return nil, nil
	}
	host, portText, err := net.SplitHostPort(e.Collector)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, err
	}
	opts, err := http2Upstream()
	if err != nil {
		return nil, err
	}
	discovery := clusterv3.Cluster_STATIC
	if !isIP(host) {
		discovery = clusterv3.Cluster_STRICT_DNS
	}
	return &clusterv3.Cluster{
		Name:                          OTelCollectorClusterName,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsName: opts},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: OTelCollectorClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(socketAddress(host, uint32(port)))}}},
		},
	}, nil
}

// vmTraceHeaders are the request headers every listener's HTTP connection manager removes from a VM
// request before it does anything else with it: the trace context and tracing requests a VM could
// send. Envoy's tracing reads them from the downstream request when tracing is on, and passes them
// to nova (and whatever proxies and tracers stand in front of it) either way:
//
//   - traceparent, tracestate (W3C trace context): Envoy's OpenTelemetry tracer continues a trace
//     from a valid traceparent instead of starting one, keeps its sampled flag whatever Envoy's
//     sampling decided and carries tracestate on (Driver::startSpan in
//     source/extensions/tracers/opentelemetry/opentelemetry_tracer_impl.cc,
//     span_context_extractor.cc, Tracer::startSpan in tracer.cc); an invalid one gives a null span.
//     The ext_proc client span is a child of that span and its context is what cmd/extproc
//     continues (Grpc::AsyncStreamImpl in source/common/grpc/async_client_impl.cc injects it into
//     the stream's gRPC metadata), so the VM would choose the parent of the decision, and whether
//     it is traced at all.
//   - baggage (W3C baggage): not read by Envoy's tracer today; removed so that no member a VM set
//     travels on with the request, whatever tracer or propagator reads it later.
//   - x-client-trace-id: forces the request to be traced (Tracing::Reason::ClientForced) whatever
//     the random sampling, for any client, internal or not (ConnectionManagerUtility::
//     mutateTracingRequestHeader in source/common/http/conn_manager_utility.cc; runtime
//     tracing.client_enabled, HCM tracing.client_sampling, default 100%), and Envoy tags the span
//     with its value.
//   - b3, x-b3-traceid, x-b3-spanid, x-b3-parentspanid, x-b3-sampled, x-b3-flags (Zipkin B3, single
//     and multi header): the other trace context Envoy's tracers continue
//     (source/extensions/tracers/zipkin/span_context_extractor.cc), and what a B3-speaking proxy in
//     front of nova (a service mesh sidecar) would continue.
//
// Not listed, because Envoy already replaces or removes them for a VM: every listener has
// use_remote_address and no internal_address_config, and since Envoy 1.33 (1.36, our minimum, has
// no runtime guard left) no address is internal without one, so every VM request is an external
// edge request: x-envoy-force-trace and the other x-envoy-* control headers are removed
// (ConnectionManagerUtility::cleanInternalHeaders), x-envoy-decorator-operation too, and
// x-request-id, where Envoy's UUID extension keeps the trace decision, is replaced by a new one
// (mutateRequestHeaders, preserve_external_request_id is off). Vendor formats of tracers cmd/xds
// never configures (uber-trace-id, x-datadog-*, sw8, x-cloud-trace-context, grpc-trace-bin) are
// not read by Envoy's OpenTelemetry tracer either.
func vmTraceHeaders() []string {
	return []string{
		"traceparent", "tracestate", "baggage",
		"x-client-trace-id",
		"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
	}
}

// earlyHeaderMutations returns the HCM's early_header_mutation_extensions: one
// envoy.http.early_header_mutation.header_mutation removing vmTraceHeaders.
//
// Early header mutations run first in ConnectionManagerUtility::mutateRequestHeaders (source/common/
// http/conn_manager_utility.cc), which ActiveStream::decodeHeaders (conn_manager_impl.cc) calls
// before the route is chosen, before mutateTracingRequestHeader makes the tracing decision, before
// traceRequest starts the span from the request headers and before any HTTP filter; "before
// routing, tracing or any filter processing" (envoy/http/early_header_mutation.h). An HTTP filter
// could not do this: the span exists before the first filter runs.
//
// They are on for every listener, with Envoy's tracing on or off. With tracing off nothing of ours
// reads these headers (cmd/extproc reads only its gRPC metadata, and forward_rules send it no request
// header), but nova still received whatever trace context the VM chose, and with it any tracer or
// proxy in front of nova; the incumbent (neutron-metadata-agent) forwards none of them either. One
// HTTP connection manager whatever the tracing setting also means that turning tracing on changes
// what Envoy adds, never what it lets through. The cost is ten header-map removals per request.
func earlyHeaderMutations() ([]*corev3.TypedExtensionConfig, error) {
	var ms []*mutationv3.HeaderMutation
	for _, h := range vmTraceHeaders() {
		ms = append(ms, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Remove{Remove: h}})
	}
	cfg, err := pack(&earlymutationv3.HeaderMutation{Mutations: ms})
	if err != nil {
		return nil, err
	}
	return []*corev3.TypedExtensionConfig{{Name: earlyHeaderMutationName, TypedConfig: cfg}}, nil
}
