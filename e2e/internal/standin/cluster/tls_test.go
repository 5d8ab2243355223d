package cluster

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

// envoyTLS writes an Envoy's TLS directory as an operator would (`xds sds`, the node's
// certificate, the CA) and returns the transport socket cmd/xds generates for serverName.
func envoyTLS(t *testing.T, ca *tlstest.CA, serverName string) (string, *corev3.TransportSocket) {
	t.Helper()
	dir := t.TempDir()
	ca.Issue(t, tlstest.Leaf{DNS: []string{"node-1"}, Client: true}).Write(t, dir, "envoy")
	ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	files, err := xdscmd.SDSFiles(xdscmd.SDSOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ts, err := translate.UpstreamTLS(translate.EnvoyTLS{SDSDir: dir, ServerName: serverName})
	if err != nil {
		t.Fatal(err)
	}
	return dir, ts
}

// server is a TLS server requiring a client certificate of ca; it reports what each handshake saw.
type server struct {
	addr string
	seen chan tls.ConnectionState
}

func startServer(t *testing.T, ca *tlstest.CA, leaf tlstest.Leaf) *server {
	t.Helper()
	cert := ca.Issue(t, leaf).TLS(t)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(),
		ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &server{addr: l.Addr().String(), seen: make(chan tls.ConnectionState, 10)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				s.seen <- tc.ConnectionState()
			}
			c.Close()
		}
	}()
	return s
}

func handshake(t *testing.T, tt *TLS, addr string) error {
	t.Helper()
	cfg, err := tt.Config()
	if err != nil {
		return err
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return tls.Client(c, cfg).Handshake()
}

// TestUpstreamTLSAsCmdXDSGeneratesIt: the stand-in's TLS from the transport socket and SDS files
// cmd/xds and `xds sds` write presents the node's certificate, offers ALPN h2, and accepts only a
// server certificate of the CA that carries the configured name.
func TestUpstreamTLSAsCmdXDSGeneratesIt(t *testing.T) {
	ca := tlstest.NewCA(t, "lab CA")
	dir, ts := envoyTLS(t, ca, "127.0.0.1")
	tt, err := parseTransportSocket(ts)
	if err != nil {
		t.Fatal(err)
	}
	good := startServer(t, ca, tlstest.Leaf{IPs: []string{"127.0.0.1"}, Server: true})
	if err := handshake(t, tt, good.addr); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	st := <-good.seen
	if st.NegotiatedProtocol != "h2" || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].DNSNames[0] != "node-1" {
		t.Errorf("server saw ALPN %q and client certificate %v", st.NegotiatedProtocol, st.PeerCertificates)
	}
	wrongName := startServer(t, ca, tlstest.Leaf{IPs: []string{"127.0.0.2"}, DNS: []string{"localhost"}, Server: true})
	if err := handshake(t, tt, wrongName.addr); err == nil || !strings.Contains(err.Error(), "match_typed_subject_alt_names") {
		t.Errorf("server certificate without the configured SAN: %v", err)
	}
	other := tlstest.NewCA(t, "other CA")
	foreign := startServer(t, other, tlstest.Leaf{IPs: []string{"127.0.0.1"}, Server: true})
	if err := handshake(t, tt, foreign.addr); err == nil {
		t.Error("a server certificate of another CA was accepted")
	}

	// Rotation: a new certificate renamed into place is what the next connection presents.
	ca.Issue(t, tlstest.Leaf{DNS: []string{"node-1-rotated"}, Client: true}).Write(t, dir, "envoy")
	if err := handshake(t, tt, good.addr); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if st := <-good.seen; st.PeerCertificates[0].DNSNames[0] != "node-1-rotated" {
		t.Errorf("after rotation the client presented %v", st.PeerCertificates[0].DNSNames)
	}
}

func TestSDSFilesAreCheckedAsEnvoyDoes(t *testing.T) {
	ca := tlstest.NewCA(t, "lab CA")
	dir, ts := envoyTLS(t, ca, "127.0.0.1")
	tt, err := parseTransportSocket(ts)
	if err != nil {
		t.Fatal(err)
	}
	client := filepath.Join(dir, translate.EnvoyClientSDSFile)
	orig, _ := os.ReadFile(client)
	os.WriteFile(client, []byte(strings.ReplaceAll(string(orig), translate.EnvoyClientSecret, "someone-else")), 0o644)
	if _, err := tt.Config(); err == nil || !strings.Contains(err.Error(), "Unexpected SDS secret (expecting "+translate.EnvoyClientSecret) {
		t.Errorf("a secret of another name: %v", err)
	}
	os.WriteFile(client, []byte("resources: []\n"), 0o644)
	if _, err := tt.Config(); err == nil || !strings.Contains(err.Error(), "Unexpected SDS secrets length: 0") {
		t.Errorf("no secret: %v", err)
	}
	os.Remove(client)
	if _, err := tt.Config(); err == nil {
		t.Error("a missing SDS file gave a TLS context")
	}
}

func TestNoALPNUnlessConfigured(t *testing.T) {
	tt, err := parseTransportSocket(mustTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := tt.Config()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.NextProtos) != 0 {
		t.Errorf("ALPN %v offered without alpn_protocols; Envoy offers none", cfg.NextProtos)
	}
}

func TestDNSNameMatchIsEnvoys(t *testing.T) {
	for _, tc := range []struct {
		name, san string
		want      bool
	}{
		{"xds.example.org", "xds.example.org", true},
		{"XDS.example.org", "xds.EXAMPLE.org", true},
		{"xds.example.org", "*.example.org", true},
		{"a.xds.example.org", "*.example.org", false},
		{"xds.example.org", "x*.example.org", true},
		{"xds.example.org", "y*.example.org", false},
		{"example.org", "*.org", true},
		{"org", "*", false},
		{"xds.example.org", "*.*.org", false},
		{"xn--bcher-kva.example", "xn--*.example", false},
	} {
		if got := dnsNameMatch(tc.name, tc.san); got != tc.want {
			t.Errorf("dnsNameMatch(%q, %q) = %v, want %v", tc.name, tc.san, got, tc.want)
		}
	}
}

// mustTLS is a transport socket with an inline validation context and no ALPN.
func mustTLS(t *testing.T) *corev3.TransportSocket {
	t.Helper()
	ca := tlstest.NewCA(t, "lab CA")
	ts, err := anyTLS(ca.WritePEM(t, filepath.Join(t.TempDir(), "ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func anyTLS(caFile string) (*corev3.TransportSocket, error) {
	a, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: caFile}},
		}},
	}})
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}
