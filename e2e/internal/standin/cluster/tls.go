package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// TLS is an UpstreamTlsContext as Envoy applies it (source/common/tls in Envoy): an optional
// client certificate, inline or from SDS; a validation context, inline, from SDS, or combined
// (default_validation_context merged with the SDS one: Envoy MergeFroms the dynamic context into
// the default); SNI; ALPN exactly as configured (Envoy offers none unless alpn_protocols says so).
// Secrets from a file-based SDS source (path_config_source, or the deprecated path) are read at
// every new connection, where Envoy watches the files and reloads them when one is moved into
// place: the certificate a connection uses is the file's current one either way.
type TLS struct {
	sni  string
	alpn []string

	cert    *tls.Certificate // inline tls_certificates[0]
	certSDS *sdsFile         // tls_certificate_sds_secret_configs[0]

	validate      bool
	validation    *tlsv3.CertificateValidationContext // inline, or the default of a combined one
	validationSDS *sdsFile
}

// sdsFile is one secret from a file-based SDS source.
type sdsFile struct {
	name, path string
}

// parseTransportSocket reads a cluster's transport_socket: only envoy.transport_sockets.tls.
func parseTransportSocket(ts *corev3.TransportSocket) (*TLS, error) {
	if ts.GetName() != "envoy.transport_sockets.tls" && ts.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
		return nil, fmt.Errorf("transport socket %q is not supported by the stand-in (only envoy.transport_sockets.tls)", ts.GetName())
	}
	var utc tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&utc); err != nil {
		return nil, fmt.Errorf("transport socket %s: %w", ts.GetName(), err)
	}
	ctc := utc.GetCommonTlsContext()
	t := &TLS{sni: utc.GetSni(), alpn: slices.Clone(ctc.GetAlpnProtocols())}
	switch n, m := len(ctc.GetTlsCertificates()), len(ctc.GetTlsCertificateSdsSecretConfigs()); {
	case n+m > 1:
		return nil, errors.New("more than one client certificate is not supported by the stand-in (Envoy's upstream contexts use one)")
	case n == 1:
		pair, err := keyPair(ctc.GetTlsCertificates()[0])
		if err != nil {
			return nil, err
		}
		t.cert = &pair
	case m == 1:
		sds, err := parseSDS(ctc.GetTlsCertificateSdsSecretConfigs()[0])
		if err != nil {
			return nil, fmt.Errorf("tls_certificate_sds_secret_configs: %w", err)
		}
		t.certSDS = sds
	}
	//lint:ignore SA1019 rejected explicitly, as the stand-in does not implement it.
	if ctc.GetValidationContextCertificateProvider() != nil || ctc.GetValidationContextCertificateProviderInstance() != nil {
		return nil, errors.New("certificate providers are not supported by the stand-in")
	}
	switch {
	case ctc.GetValidationContext() != nil:
		t.validate, t.validation = true, ctc.GetValidationContext()
	case ctc.GetValidationContextSdsSecretConfig() != nil:
		sds, err := parseSDS(ctc.GetValidationContextSdsSecretConfig())
		if err != nil {
			return nil, fmt.Errorf("validation_context_sds_secret_config: %w", err)
		}
		t.validate, t.validationSDS = true, sds
	case ctc.GetCombinedValidationContext() != nil:
		cvc := ctc.GetCombinedValidationContext()
		//lint:ignore SA1019 rejected explicitly, as the stand-in does not implement it.
		if cvc.GetValidationContextCertificateProvider() != nil || cvc.GetValidationContextCertificateProviderInstance() != nil {
			return nil, errors.New("certificate providers are not supported by the stand-in")
		}
		sds, err := parseSDS(cvc.GetValidationContextSdsSecretConfig())
		if err != nil {
			return nil, fmt.Errorf("combined_validation_context: %w", err)
		}
		t.validate, t.validation, t.validationSDS = true, cvc.GetDefaultValidationContext(), sds
	}
	if t.validation != nil {
		// Check what can be checked now, as Envoy does when the cluster is created.
		if _, err := verifierFor(t.validation, t.validationSDS == nil); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// parseSDS accepts the file-based SDS sources only (the stand-in has no SDS server).
func parseSDS(c *tlsv3.SdsSecretConfig) (*sdsFile, error) {
	if c.GetName() == "" {
		return nil, errors.New("SDS secret without a name")
	}
	src := c.GetSdsConfig()
	if src == nil {
		return nil, fmt.Errorf("SDS secret %s: static secrets (no sds_config) are not supported by the stand-in", c.GetName())
	}
	p := src.GetPathConfigSource().GetPath()
	//lint:ignore SA1019 Envoy still honours the deprecated field; so does the stand-in.
	if dp := src.GetPath(); dp != "" {
		p = dp
	}
	if p == "" {
		return nil, fmt.Errorf("SDS secret %s: only file-based SDS (path_config_source) is supported by the stand-in", c.GetName())
	}
	return &sdsFile{name: c.GetName(), path: p}, nil
}

// load reads the secret the way Envoy's file subscription and SdsApi do: the file is a
// DiscoveryResponse (YAML or JSON) with exactly one Secret, of the configured name.
func (s *sdsFile) load() (*tlsv3.Secret, error) {
	raw, err := os.ReadFile(s.path)
	if err != nil {
		return nil, fmt.Errorf("SDS secret %s: %w", s.name, err)
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("SDS file %s: %w", s.path, err)
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("SDS file %s: %w", s.path, err)
	}
	var dr discoveryv3.DiscoveryResponse
	if err := protojson.Unmarshal(js, &dr); err != nil {
		return nil, fmt.Errorf("SDS file %s: %w", s.path, err)
	}
	if n := len(dr.GetResources()); n != 1 {
		return nil, fmt.Errorf("SDS file %s: Unexpected SDS secrets length: %d", s.path, n)
	}
	var sec tlsv3.Secret
	if err := dr.GetResources()[0].UnmarshalTo(&sec); err != nil {
		return nil, fmt.Errorf("SDS file %s: %w", s.path, err)
	}
	if err := sec.ValidateAll(); err != nil {
		return nil, fmt.Errorf("SDS file %s: %w", s.path, err)
	}
	if sec.GetName() != s.name {
		return nil, fmt.Errorf("SDS file %s: Unexpected SDS secret (expecting %s): %s", s.path, s.name, sec.GetName())
	}
	return &sec, nil
}

// Config returns the tls.Config of one new connection (secrets from SDS files read now).
func (t *TLS) Config() (*tls.Config, error) {
	cfg := &tls.Config{ServerName: t.sni, MinVersion: tls.VersionTLS12, NextProtos: slices.Clone(t.alpn)}
	switch {
	case t.cert != nil:
		cfg.Certificates = []tls.Certificate{*t.cert}
	case t.certSDS != nil:
		sec, err := t.certSDS.load()
		if err != nil {
			return nil, err
		}
		if sec.GetTlsCertificate() == nil {
			return nil, fmt.Errorf("SDS secret %s is not a tls_certificate", sec.GetName())
		}
		pair, err := keyPair(sec.GetTlsCertificate())
		if err != nil {
			return nil, fmt.Errorf("SDS secret %s: %w", sec.GetName(), err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	// Like Envoy: without a validation context the peer is not verified; with one, the chain is
	// verified and names only through match_typed_subject_alt_names.
	cfg.InsecureSkipVerify = true
	if t.validate {
		vc := &tlsv3.CertificateValidationContext{}
		if t.validation != nil {
			vc = proto.Clone(t.validation).(*tlsv3.CertificateValidationContext)
		}
		if t.validationSDS != nil {
			sec, err := t.validationSDS.load()
			if err != nil {
				return nil, err
			}
			if sec.GetValidationContext() == nil {
				return nil, fmt.Errorf("SDS secret %s is not a validation_context", sec.GetName())
			}
			proto.Merge(vc, sec.GetValidationContext())
		}
		v, err := verifierFor(vc, true)
		if err != nil {
			return nil, err
		}
		cfg.VerifyPeerCertificate = v
	}
	return cfg, nil
}

func keyPair(tc *tlsv3.TlsCertificate) (tls.Certificate, error) {
	chain, err := readSource(tc.GetCertificateChain())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate_chain: %w", err)
	}
	key, err := readSource(tc.GetPrivateKey())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("private_key: %w", err)
	}
	pair, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client certificate: %w", err)
	}
	return pair, nil
}

// verifierFor turns a validation context into a chain and SAN check. complete says the context
// is final (no SDS part still to merge): then it must name its trust anchors.
func verifierFor(vc *tlsv3.CertificateValidationContext, complete bool) (func([][]byte, [][]*x509.Certificate) error, error) {
	sans, err := sanMatchers(vc.GetMatchTypedSubjectAltNames())
	if err != nil {
		return nil, err
	}
	//lint:ignore SA1019 rejected explicitly, as the stand-in does not implement it.
	if len(vc.GetMatchSubjectAltNames()) > 0 || len(vc.GetVerifyCertificateSpki()) > 0 || len(vc.GetVerifyCertificateHash()) > 0 || vc.GetCrl() != nil {
		return nil, errors.New("validation_context: only trusted_ca, system_root_certs and match_typed_subject_alt_names are supported by the stand-in")
	}
	var pool *x509.CertPool // nil: system roots
	switch {
	case vc.GetTrustedCa() != nil:
		pem, err := readSource(vc.GetTrustedCa())
		if err != nil {
			return nil, fmt.Errorf("trusted_ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("trusted_ca: no PEM certificates")
		}
	case vc.GetSystemRootCerts() != nil:
	case complete:
		return nil, errors.New("validation_context needs trusted_ca or system_root_certs in the stand-in")
	}
	return verifyChain(pool, sans), nil
}

// sanMatcher is an exact subject-alt-name match of one type.
type sanMatcher struct {
	kind  tlsv3.SubjectAltNameMatcher_SanType
	value string
}

func sanMatchers(in []*tlsv3.SubjectAltNameMatcher) ([]sanMatcher, error) {
	var out []sanMatcher
	for _, m := range in {
		exact := m.GetMatcher().GetExact()
		if exact == "" || m.GetMatcher().GetIgnoreCase() {
			return nil, errors.New("only exact, case-sensitive subject alt name matchers are supported by the stand-in")
		}
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_URI:
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			ip := net.ParseIP(exact)
			if ip == nil {
				return nil, fmt.Errorf("subject alt name %q is not an IP address", exact)
			}
			exact = ip.String()
		default:
			return nil, fmt.Errorf("subject alt name type %s is not supported by the stand-in", m.GetSanType())
		}
		out = append(out, sanMatcher{kind: m.GetSanType(), value: exact})
	}
	return out, nil
}

func (m sanMatcher) matches(c *x509.Certificate) bool {
	switch m.kind {
	case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
		return slices.ContainsFunc(c.IPAddresses, func(ip net.IP) bool { return ip.String() == m.value })
	case tlsv3.SubjectAltNameMatcher_URI:
		return slices.ContainsFunc(c.URIs, func(u *url.URL) bool { return u.String() == m.value })
	}
	return slices.ContainsFunc(c.DNSNames, func(san string) bool { return dnsNameMatch(m.value, san) })
}

// dnsNameMatch is Envoy's Utility::dnsNameMatch (source/common/tls/utility.cc), used for an exact
// DNS matcher: case-insensitive, and a certificate name may have a wildcard in its left-most label
// only (*.example.com, or a partial one like w*.example.com), never in an A-label (xn--).
func dnsNameMatch(name, pattern string) bool {
	name, pattern = strings.ToLower(name), strings.ToLower(pattern)
	if name == pattern {
		return true
	}
	pLabel, pRest, okP := strings.Cut(pattern, ".")
	nLabel, nRest, okN := strings.Cut(name, ".")
	if !okP || !okN || !strings.Contains(pLabel, "*") || strings.Contains(pRest, "*") || strings.HasPrefix(pLabel, "xn--") {
		return false
	}
	return nRest == pRest && labelWildcardMatch(nLabel, pLabel)
}

// labelWildcardMatch is Envoy's Utility::labelWildcardMatch: "*" matches any label, one "*"
// inside a pattern matches what is between its prefix and suffix.
func labelWildcardMatch(label, pattern string) bool {
	if pattern == "*" {
		return true
	}
	if strings.Count(pattern, "*") != 1 {
		return false
	}
	prefix, suffix, _ := strings.Cut(pattern, "*")
	return len(pattern) <= len(label)+1 && strings.HasPrefix(label, prefix) && strings.HasSuffix(label, suffix)
}

// verifyChain verifies the upstream chain against pool (nil: system roots) and, when sans is not
// empty, requires the leaf to carry one of them (Envoy checks names only through these matchers).
func verifyChain(pool *x509.CertPool, sans []sanMatcher) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("upstream sent no certificate")
		}
		certs := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return fmt.Errorf("parse upstream certificate: %w", err)
			}
			certs = append(certs, c)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
			return err
		}
		if len(sans) == 0 {
			return nil
		}
		for _, m := range sans {
			if m.matches(certs[0]) {
				return nil
			}
		}
		return errors.New("upstream certificate matches none of match_typed_subject_alt_names")
	}
}
