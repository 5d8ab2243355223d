// Package cluster turns Envoy Cluster and ClusterLoadAssignment resources into upstreams the
// stand-in can reach: a round-robin dialer over the cluster's endpoints (TCP or UNIX socket), with
// the cluster's connect timeout and optional upstream TLS, plus an HTTP transport for the router and
// a gRPC connection for ext_proc.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpoptsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// DefaultConnectTimeout is Envoy's default cluster connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// httpProtocolOptionsKey is the typed_extension_protocol_options key of HttpProtocolOptions.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// Endpoint is one upstream address.
type Endpoint struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is "host:port" (host may be a DNS name for STRICT_DNS/LOGICAL_DNS) or a socket path.
	Address string
}

// Config is a parsed, validated cluster.
type Config struct {
	// Name is the cluster name.
	Name string
	// ConnectTimeout bounds each upstream connection attempt.
	ConnectTimeout time.Duration
	// EDSServiceName is set for EDS clusters: the ClusterLoadAssignment to take endpoints from.
	EDSServiceName string
	// Endpoints are the cluster's addresses (for EDS clusters, filled from the assignment).
	Endpoints []Endpoint
	// TLS is the upstream TLS context, nil for plaintext.
	TLS *TLS
	// HTTP2 says the upstream speaks HTTP/2 (h2c when plaintext).
	HTTP2 bool
}

// Parse validates c and returns its Config. Only what the stand-in implements is accepted; anything
// else is an error so that the resource is NACKed instead of silently misapplied.
func Parse(c *clusterv3.Cluster) (*Config, error) {
	cfg := &Config{Name: c.GetName(), ConnectTimeout: DefaultConnectTimeout}
	if cfg.Name == "" {
		return nil, errors.New("cluster without a name")
	}
	if d := c.GetConnectTimeout(); d != nil {
		cfg.ConnectTimeout = d.AsDuration()
	}
	if c.GetClusterType() != nil {
		return nil, fmt.Errorf("cluster %s: custom cluster_type %q is not supported by the stand-in", cfg.Name, c.GetClusterType().GetName())
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		eps, err := Endpoints(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", cfg.Name, err)
		}
		if c.GetType() == clusterv3.Cluster_STATIC {
			for _, e := range eps {
				if e.Network == "tcp" {
					host, _, _ := net.SplitHostPort(e.Address)
					if net.ParseIP(host) == nil {
						return nil, fmt.Errorf("cluster %s: STATIC cluster endpoint %q is not an IP address", cfg.Name, host)
					}
				}
			}
		}
		cfg.Endpoints = eps
	case clusterv3.Cluster_EDS:
		cfg.EDSServiceName = c.GetEdsClusterConfig().GetServiceName()
		if cfg.EDSServiceName == "" {
			cfg.EDSServiceName = cfg.Name
		}
		if src := c.GetEdsClusterConfig().GetEdsConfig(); src != nil && src.GetAds() == nil {
			return nil, fmt.Errorf("cluster %s: eds_config must use ADS in the stand-in", cfg.Name)
		}
	default:
		return nil, fmt.Errorf("cluster %s: discovery type %s is not supported by the stand-in", cfg.Name, c.GetType())
	}
	if ts := c.GetTransportSocket(); ts != nil {
		t, err := parseTransportSocket(ts)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", cfg.Name, err)
		}
		cfg.TLS = t
	}
	//lint:ignore SA1019 Envoy still honours the deprecated field; so does the stand-in.
	if c.GetHttp2ProtocolOptions() != nil {
		cfg.HTTP2 = true
	}
	if a, ok := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; ok {
		var opts httpoptsv3.HttpProtocolOptions
		if err := a.UnmarshalTo(&opts); err != nil {
			return nil, fmt.Errorf("cluster %s: %s: %w", cfg.Name, httpProtocolOptionsKey, err)
		}
		if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil {
			cfg.HTTP2 = true
		}
		if opts.GetUseDownstreamProtocolConfig() != nil || opts.GetAutoConfig() != nil {
			return nil, fmt.Errorf("cluster %s: only explicit_http_config is supported by the stand-in", cfg.Name)
		}
	}
	for k := range c.GetTypedExtensionProtocolOptions() {
		if k != httpProtocolOptionsKey {
			return nil, fmt.Errorf("cluster %s: unknown typed_extension_protocol_options %q", cfg.Name, k)
		}
	}
	return cfg, nil
}

// Endpoints returns the addresses of a ClusterLoadAssignment, in order.
func Endpoints(cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	var out []Endpoint
	for _, l := range cla.GetEndpoints() {
		for _, lb := range l.GetLbEndpoints() {
			addr := lb.GetEndpoint().GetAddress()
			if addr == nil {
				return nil, errors.New("lb_endpoint without endpoint.address (named endpoints are not supported)")
			}
			if lb.GetHealthStatus() == corev3.HealthStatus_UNHEALTHY || lb.GetHealthStatus() == corev3.HealthStatus_DRAINING {
				continue
			}
			e, err := endpointOf(addr)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

func endpointOf(addr *corev3.Address) (Endpoint, error) {
	switch {
	case addr.GetPipe() != nil:
		if addr.GetPipe().GetPath() == "" {
			return Endpoint{}, errors.New("pipe address without path")
		}
		return Endpoint{Network: "unix", Address: addr.GetPipe().GetPath()}, nil
	case addr.GetSocketAddress() != nil:
		sa := addr.GetSocketAddress()
		if sa.GetProtocol() != corev3.SocketAddress_TCP {
			return Endpoint{}, fmt.Errorf("socket address %s: only TCP is supported", sa.GetAddress())
		}
		if sa.GetNamedPort() != "" {
			return Endpoint{}, fmt.Errorf("socket address %s: named_port is not supported", sa.GetAddress())
		}
		if sa.GetNetworkNamespaceFilepath() != "" {
			return Endpoint{}, fmt.Errorf("socket address %s: upstream network_namespace_filepath is not supported", sa.GetAddress())
		}
		return Endpoint{Network: "tcp", Address: net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))}, nil
	default:
		return Endpoint{}, errors.New("endpoint address is neither socket_address nor pipe")
	}
}

func readSource(ds *corev3.DataSource) ([]byte, error) {
	switch {
	case ds == nil:
		return nil, errors.New("missing data source")
	case ds.GetFilename() != "":
		b, err := os.ReadFile(ds.GetFilename())
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", ds.GetFilename(), err)
		}
		return b, nil
	case ds.GetInlineBytes() != nil:
		return ds.GetInlineBytes(), nil
	case ds.GetInlineString() != "":
		return []byte(ds.GetInlineString()), nil
	default:
		return nil, errors.New("data source must be filename, inline_bytes or inline_string")
	}
}

// ConnectError marks a failure to open an upstream connection (Envoy's "connection failure").
type ConnectError struct{ Err error }

// Error implements error.
func (e *ConnectError) Error() string { return "upstream connect: " + e.Err.Error() }

// Unwrap returns the dial error.
func (e *ConnectError) Unwrap() error { return e.Err }

// dial connects to one endpoint chosen by next, within the connect timeout.
func dial(ctx context.Context, cfg *Config, ep Endpoint) (net.Conn, error) {
	d := net.Dialer{Timeout: cfg.ConnectTimeout}
	c, err := d.DialContext(ctx, ep.Network, ep.Address)
	if err != nil {
		return nil, &ConnectError{Err: err}
	}
	return c, nil
}
