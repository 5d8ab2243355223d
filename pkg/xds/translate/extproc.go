package translate

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

const (
	extProcFilterName = "envoy.filters.http.ext_proc"
	// httpProtocolOptionsName is the typed_extension_protocol_options key for HttpProtocolOptions.
	httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// extProcMaxRequests lifts the default circuit breaker (1024 concurrent requests): every
	// metadata request is one ext_proc stream, and a boot storm must not turn into 500s.
	extProcMaxRequests = 100000
)

// extProcFilter builds and packs the ext_proc filter of network n: the scope travels as gRPC
// initial metadata (never as an HTTP header a VM could send), the VM address as the source.address
// attribute. Only request headers go to cmd/extproc; bodies (the password POST) stream to nova
// untouched. failure_mode_allow is false: without an answer from cmd/extproc the request fails.
// allow_mode_override lets cmd/extproc ask, for the first request of a VM per cache fill, to see
// nova's response status on the same stream, so that a signature nova refuses (a shared secret out
// of step) is logged and counted where the operator looks; every other request stays one round trip.
// forward_rules keeps every request header the VM sent away from cmd/extproc.
func extProcFilter(n source.Network, e ExtProc) (*anypb.Any, error) {
	key := contract.NetworkIDMetadata
	switch n.Kind {
	case resolve.KindNetwork:
	case resolve.KindRouter:
		key = contract.RouterIDMetadata
	default:
		return nil, fmt.Errorf("unknown kind %v", n.Kind)
	}
	return pack(&extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
				ClusterName: contract.ExtProcClusterName,
			}},
			InitialMetadata: []*corev3.HeaderValue{{Key: key, Value: n.ID}},
		},
		FailureModeAllow: false,
		ProcessingMode: &extprocv3.ProcessingMode{
			RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
			RequestBodyMode:     extprocv3.ProcessingMode_NONE,
			ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		},
		AllowModeOverride: true,
		RequestAttributes: []string{contract.SourceAddressAttribute},
		MessageTimeout:    durationpb.New(e.MessageTimeout),
		ForwardRules:      forwardStatusOnly(),
	})
}

// forwardStatusOnly is the forward_rules of every listener: Envoy sends cmd/extproc only the headers
// allowed_headers matches, pseudo-headers included (MutationUtils::headerCanBeForwarded in Envoy's
// source/extensions/filters/http/ext_proc/mutation_utils.cc, applied by Filter::buildHeaderRequest
// in ext_proc.cc to request and response headers alike). cmd/extproc reads no request header at
// all, and of nova's response headers (sent after a mode_override) only :status. A request has no
// :status, so no header a VM sent reaches cmd/extproc.
func forwardStatusOnly() *extprocv3.HeaderForwardingRules {
	return &extprocv3.HeaderForwardingRules{AllowedHeaders: &matcherv3.ListStringMatcher{
		Patterns: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: ":status"}}},
	}}
}

// ExtProcCluster returns the extproc cluster: HTTP/2 (gRPC) to cmd/extproc over a UNIX socket or
// TCP, with gRPC health checks (cmd/extproc serves grpc.health.v1). Over TCP it is mutual TLS
// (UpstreamTLS: the node's client certificate, cmd/extproc's certificate checked against the CA
// and the server name), unless the settings ask for plain text.
func ExtProcCluster(s Settings) (*clusterv3.Cluster, error) {
	target, err := parseExtProcAddress(s.ExtProc.Address)
	if err != nil {
		return nil, err
	}
	opts, err := http2Upstream()
	if err != nil {
		return nil, err
	}
	var addr *corev3.Address
	discovery := clusterv3.Cluster_STATIC
	if target.unixPath != "" {
		addr = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: target.unixPath}}}
	} else {
		addr = socketAddress(target.host, target.port)
		if !isIP(target.host) {
			discovery = clusterv3.Cluster_STRICT_DNS
		}
	}
	c := &clusterv3.Cluster{
		Name:                 contract.ExtProcClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsName: opts,
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: contract.ExtProcClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(addr)}}},
		},
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(time.Second),
			Interval:           durationpb.New(5 * time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(3),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker:      &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{}},
		}},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxRequests:        wrapperspb.UInt32(extProcMaxRequests),
			MaxPendingRequests: wrapperspb.UInt32(extProcMaxRequests),
		}}},
	}
	if target.unixPath == "" && !s.ExtProc.Plaintext {
		if c.TransportSocket, err = UpstreamTLS(s.ExtProc.tls(target)); err != nil {
			return nil, fmt.Errorf("extproc cluster: %w", err)
		}
	}
	if err := validate(c); err != nil {
		return nil, err
	}
	return c, nil
}

// tls returns the TLS toward target, the server name defaulting to its host.
func (e ExtProc) tls(target extProcTarget) EnvoyTLS {
	t := e.TLS
	if t.ServerName == "" {
		t.ServerName = target.host
	}
	return t
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func lbEndpoint(addr *corev3.Address) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}}}
}

// http2Upstream is the packed protocol options of a cluster spoken to in HTTP/2 (gRPC: cmd/extproc,
// the OpenTelemetry collector).
func http2Upstream() (*anypb.Any, error) {
	return pack(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
}
