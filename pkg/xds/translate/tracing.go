package translate

import (
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// OTelCollectorClusterName is the cluster Envoy sends its spans to when EnvoyTracing is on.
const OTelCollectorClusterName = "otel_collector"

// openTelemetryTracerName is the name of Envoy's OpenTelemetry tracer extension.
const openTelemetryTracerName = "envoy.tracers.opentelemetry"

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
