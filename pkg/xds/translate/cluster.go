package translate

import (
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// NovaCluster returns the nova_metadata cluster: every nova metadata host on the nova port, STATIC
// when all hosts are IP addresses and STRICT_DNS otherwise, TLS when the protocol is https.
//
// Active health checks GET / and expect 200 (nova's metadata root lists the versions and needs no
// signed headers). Outlier detection ejects a host after 5 consecutive gateway failures (connect
// errors, 502, 503, 504), not on other 5xx: nova legitimately answers 500 for a lookup error of
// one instance.
func NovaCluster(s Settings) (*clusterv3.Cluster, error) {
	n := s.Nova
	discovery := clusterv3.Cluster_STATIC
	eps := make([]*endpointv3.LbEndpoint, 0, len(n.Hosts))
	for _, h := range n.Hosts {
		if !isIP(h) {
			discovery = clusterv3.Cluster_STRICT_DNS
		}
		eps = append(eps, lbEndpoint(socketAddress(h, uint32(n.Port))))
	}
	c := &clusterv3.Cluster{
		Name:                 contract.NovaClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(s.Timeouts.Connect),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: contract.NovaClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}},
		},
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(5 * time.Second),
			Interval:           durationpb.New(10 * time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(3),
			HealthyThreshold:   wrapperspb.UInt32(2),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
				Path:             "/",
				ExpectedStatuses: []*typev3.Int64Range{{Start: 200, End: 201}},
			}},
		}},
		OutlierDetection: &clusterv3.OutlierDetection{
			Consecutive_5Xx:                    wrapperspb.UInt32(5),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(0),
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(5),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			Interval:                           durationpb.New(10 * time.Second),
			BaseEjectionTime:                   durationpb.New(30 * time.Second),
			MaxEjectionPercent:                 wrapperspb.UInt32(50),
		},
	}
	if n.Protocol == "https" {
		ts, err := novaTLS(n)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	if err := validate(c); err != nil {
		return nil, err
	}
	return c, nil
}

// novaTLS builds the upstream TLS context like neutron's requests-based client: verify nova's
// certificate against auth_ca_cert (or the system roots) and its name against the configured host
// names, unless nova_metadata_insecure; present the client certificate when given. SNI is set when
// there is a single host name (Envoy's sni is per cluster).
func novaTLS(n Nova) (*corev3.TransportSocket, error) {
	common := &tlsv3.CommonTlsContext{}
	if n.ClientCert != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: fileSource(n.ClientCert),
			PrivateKey:       fileSource(n.ClientKey),
		}}
	}
	if !n.Insecure {
		vc := &tlsv3.CertificateValidationContext{}
		if n.CACert != "" {
			vc.TrustedCa = fileSource(n.CACert)
		} else {
			vc.SystemRootCerts = &tlsv3.CertificateValidationContext_SystemRootCerts{}
		}
		for _, h := range n.Hosts {
			san := tlsv3.SubjectAltNameMatcher_DNS
			if a, err := netip.ParseAddr(h); err == nil {
				san, h = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, a.String()
			}
			vc.MatchTypedSubjectAltNames = append(vc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{
				SanType: san,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}},
			})
		}
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	utc := &tlsv3.UpstreamTlsContext{CommonTlsContext: common}
	if len(n.Hosts) == 1 && !isIP(n.Hosts[0]) {
		utc.Sni = n.Hosts[0]
	}
	a, err := pack(utc)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}
