package translate

import (
	"errors"
	"fmt"
	"net/netip"
	"path"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
)

// The TLS identity of an Envoy toward metaproxy's services (cmd/xds, and cmd/extproc on TCP): one
// client certificate per node and the CA bundle that signed the services' certificates. Envoy
// reads them through two SDS files in one directory on its host (written by `xds sds`), because
// Envoy re-reads certificates only when they come from SDS: a file-based SDS source is watched,
// and a rotated certificate is used without a restart (Envoy's docs, "Secret discovery service",
// example "certificate rotation for xDS gRPC connection"; TlsCertificate.watched_directory).
// Each SDS file holds exactly one Secret, named as below (Envoy's SdsApi rejects any other count
// or name).
const (
	// EnvoyClientSecret is the Secret holding the Envoy's client certificate and key.
	EnvoyClientSecret = "metaproxy-envoy-client"
	// EnvoyCASecret is the Secret holding the CA bundle that verifies metaproxy's services.
	EnvoyCASecret = "metaproxy-ca"
	// EnvoyClientSDSFile and EnvoyCASDSFile are their files in EnvoyTLS.SDSDir.
	EnvoyClientSDSFile = "envoy-client.sds.yaml"
	EnvoyCASDSFile     = "ca.sds.yaml"
	// DefaultSDSDir is where the deploy files put them (deploy/systemd/etc-metaproxy/tls).
	DefaultSDSDir = "/etc/metaproxy/tls"
)

// EnvoyTLS is how Envoy speaks TLS to one of metaproxy's services.
type EnvoyTLS struct {
	// SDSDir is the directory on the Envoy's host holding EnvoyClientSDSFile and EnvoyCASDSFile.
	SDSDir string
	// ServerName must be a subject alternative name of the service's certificate: a DNS name
	// (also sent as SNI) or an IP address.
	ServerName string
}

func (t EnvoyTLS) validate() error {
	var errs []error
	if !path.IsAbs(t.SDSDir) {
		errs = append(errs, fmt.Errorf("SDS directory %q: want an absolute path on the Envoy's host", t.SDSDir))
	}
	if t.ServerName == "" {
		errs = append(errs, errors.New("no server name to verify the certificate against"))
	}
	return errors.Join(errs...)
}

// UpstreamTLS returns the transport socket of a cluster toward a metaproxy service: TLS with the
// Envoy's client certificate, the service's certificate verified against the CA bundle and
// ServerName (exact DNS or IP subject alternative name), ALPN h2 (gRPC servers refuse TLS
// connections that negotiate no protocol, and Envoy offers none unless told).
func UpstreamTLS(t EnvoyTLS) (*corev3.TransportSocket, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: t.ServerName}},
	}
	sni := t.ServerName
	if a, err := netip.ParseAddr(t.ServerName); err == nil {
		san.SanType, san.Matcher.MatchPattern = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, &matcherv3.StringMatcher_Exact{Exact: a.String()}
		sni = "" // SNI carries host names only (RFC 6066)
	}
	utc := &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"h2"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsFile(t.SDSDir, EnvoyClientSecret, EnvoyClientSDSFile)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san}},
				ValidationContextSdsSecretConfig: sdsFile(t.SDSDir, EnvoyCASecret, EnvoyCASDSFile),
			}},
		},
	}
	a, err := pack(utc)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

// sdsFile is an SDS secret read from dir/file, reloaded when a file is moved into dir (how
// configuration tools and Kubernetes' ..data links replace files).
func sdsFile(dir, name, file string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{
		Name: name,
		SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{PathConfigSource: &corev3.PathConfigSource{
				Path:             path.Join(dir, file),
				WatchedDirectory: &corev3.WatchedDirectory{Path: dir},
			}},
		},
	}
}
