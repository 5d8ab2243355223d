package xdscmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// TestBootstrapTLSIsTranslates: the xds cluster's transport socket in the bootstrap is exactly
// what translate.UpstreamTLS builds for the extproc cluster (one definition of how an Envoy
// speaks TLS to metaproxy), for an IP address and a DNS name.
func TestBootstrapTLSIsTranslates(t *testing.T) {
	for name, tc := range map[string]struct{ addr, serverName, want string }{
		"ip":            {addr: "127.0.0.1:18000", want: "127.0.0.1"},
		"dns":           {addr: "xds.metaproxy.svc:18000", want: "xds.metaproxy.svc"},
		"named, socket": {addr: "unix:///run/metaproxy/xds.sock", serverName: "xds.local", want: "xds.local"},
	} {
		t.Run(name, func(t *testing.T) {
			raw, err := Bootstrap(BootstrapOptions{NodeID: "n1", XDSAddress: tc.addr, AdminPort: 9901, APIType: "GRPC", SDSDir: "/etc/metaproxy/tls", ServerName: tc.serverName})
			if err != nil {
				t.Fatal(err)
			}
			b := parseBootstrap(t, raw)
			got := b.GetStaticResources().GetClusters()[0].GetTransportSocket()
			want, err := translate.UpstreamTLS(translate.EnvoyTLS{SDSDir: "/etc/metaproxy/tls", ServerName: tc.want})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("bootstrap transport socket differs from translate.UpstreamTLS (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBootstrapPlaintextAndPipe(t *testing.T) {
	raw, err := Bootstrap(BootstrapOptions{NodeID: "n1", XDSAddress: "unix:///run/metaproxy/xds.sock", AdminPort: 9901, APIType: "DELTA_GRPC", Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	c := parseBootstrap(t, raw).GetStaticResources().GetClusters()[0]
	if c.GetTransportSocket() != nil || c.GetType().String() != "STATIC" ||
		c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != "/run/metaproxy/xds.sock" {
		t.Errorf("plain-text pipe cluster: %v", c)
	}
	for name, o := range map[string]BootstrapOptions{
		"socket without a server name": {NodeID: "n", XDSAddress: "unix:///run/x.sock", AdminPort: 1, APIType: "GRPC", SDSDir: "/etc/metaproxy/tls"},
		"relative SDS dir":             {NodeID: "n", XDSAddress: "h:1", AdminPort: 1, APIType: "GRPC", SDSDir: "tls"},
		"quoted SDS dir":               {NodeID: "n", XDSAddress: "h:1", AdminPort: 1, APIType: "GRPC", SDSDir: "/etc/a: b"},
		"relative socket":              {NodeID: "n", XDSAddress: "unix://x.sock", AdminPort: 1, APIType: "GRPC", Plaintext: true},
	} {
		if _, err := Bootstrap(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSDSFilesAreWhatEnvoyReads parses the files `xds sds` writes the way Envoy's file-based SDS
// does (YAML -> DiscoveryResponse with one Secret of the expected name) and validates them.
func TestSDSFilesAreWhatEnvoyReads(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := Main(t.Context(), []string{"sds", "--sds-dir", dir, "--ca", "/etc/ssl/metaproxy-ca.pem"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	want := map[string]func(*tlsv3.Secret) bool{
		translate.EnvoyClientSDSFile: func(s *tlsv3.Secret) bool {
			c := s.GetTlsCertificate()
			return s.GetName() == translate.EnvoyClientSecret && c.GetCertificateChain().GetFilename() == dir+"/envoy.crt" &&
				c.GetPrivateKey().GetFilename() == dir+"/envoy.key" && c.GetWatchedDirectory().GetPath() == dir
		},
		translate.EnvoyCASDSFile: func(s *tlsv3.Secret) bool {
			v := s.GetValidationContext()
			return s.GetName() == translate.EnvoyCASecret && v.GetTrustedCa().GetFilename() == "/etc/ssl/metaproxy-ca.pem" && v.GetWatchedDirectory().GetPath() == "/etc/ssl"
		},
	}
	for file, ok := range want {
		raw, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := yaml.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(v)
		var dr discoveryv3.DiscoveryResponse
		if err := protojson.Unmarshal(js, &dr); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(dr.GetResources()) != 1 {
			t.Fatalf("%s: %d resources, Envoy wants exactly one", file, len(dr.GetResources()))
		}
		var s tlsv3.Secret
		if err := dr.GetResources()[0].UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if err := s.ValidateAll(); err != nil || !ok(&s) {
			t.Errorf("%s: %v (%v)", file, &s, err)
		}
	}
	if _, err := SDSFiles(SDSOptions{Dir: dir, Cert: "/a/envoy.crt", Key: "/b/envoy.key"}); err == nil || !strings.Contains(err.Error(), "one directory") {
		t.Errorf("certificate and key apart: %v", err)
	}
	if _, err := SDSFiles(SDSOptions{Dir: "tls"}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative directory: %v", err)
	}
}

func TestListenSecurityIsValidated(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want []string // nil = valid
	}{
		"loopback plain text":   {args: []string{"--listen", "127.0.0.1:18000"}},
		"ipv6 loopback":         {args: []string{"--listen", "[::1]:18000"}},
		"localhost":             {args: []string{"--listen", "localhost:18000"}},
		"unix socket":           {args: []string{"--listen", "unix:///run/metaproxy/xds.sock"}},
		"lab flag":              {args: []string{"--listen", "0.0.0.0:18000", "--insecure-plaintext"}},
		"all interfaces":        {args: []string{"--listen", "0.0.0.0:18000"}, want: []string{"without TLS", "--tls-cert", "--insecure-plaintext"}},
		"empty host":            {args: []string{"--listen", ":18000"}, want: []string{"without TLS"}},
		"with TLS anywhere":     {args: []string{"--listen", "10.0.0.1:18000", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"}},
		"half the TLS":          {args: []string{"--tls-cert", "c"}, want: []string{"go together"}},
		"bad node binding":      {args: []string{"--node-binding", "cn"}, want: []string{"--node-binding"}},
		"relative socket":       {args: []string{"--listen", "unix://xds.sock"}, want: []string{"absolute"}},
		"extproc tcp, bad dir":  {args: []string{"--extproc-address", "10.0.0.2:50051", "--envoy-sds-dir", "tls"}, want: []string{"absolute"}},
		"extproc tcp, lab":      {args: []string{"--extproc-address", "10.0.0.2:50051", "--extproc-plaintext"}},
		"extproc tcp, defaults": {args: []string{"--extproc-address", "extproc.metaproxy:50051"}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := parseConfig(t, tc.args...)
			if err == nil {
				_, err = cfg.Settings()
			}
			if tc.want == nil {
				if err != nil {
					t.Fatalf("invalid: %v", err)
				}
				return
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not say %q", err, w)
				}
			}
		})
	}
}

// TestMainServesMutualTLS runs the whole command with mutual TLS: node n1's certificate gets n1's
// listeners and nothing of n2; a client without a certificate gets nothing; both are counted.
func TestMainServesMutualTLS(t *testing.T) {
	const id1, id2 = "6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11", "5c9d8e7f-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
	dir := t.TempDir()
	file := filepath.Join(dir, "networks.yaml")
	os.WriteFile(file, []byte("nodes:\n  n1:\n    - id: "+id1+"\n  n2:\n    - id: "+id2+"\n"), 0o600)
	ca := tlstest.NewCA(t, "metaproxy lab CA")
	cert, key := ca.Issue(t, tlstest.Leaf{DNS: []string{"xds.lab"}, Server: true}).Write(t, dir, "xds")
	caFile := ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	xdsAddr, adminAddr := freeAddr(t), freeAddr(t)

	// Misconfigured TLS fails at start with every problem at once.
	err := Main(t.Context(), []string{"--listen", xdsAddr, "--networks-file", file, "--tls-cert", filepath.Join(dir, "nope.crt"), "--tls-key", caFile, "--tls-client-ca", cert, "--poll-interval", "1ms"}, io.Discard, io.Discard)
	for _, want := range []string{"--tls-cert", "--tls-key", "--poll-interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("broken TLS files: %v; want it to name %s", err, want)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, []string{"--listen", xdsAddr, "--admin-listen", adminAddr, "--networks-file", file, "--log-level", "warn",
			"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", caFile}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	}()
	dial := func(id *tlstest.Issued) *grpc.ClientConn {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "xds.lab"}
		if id != nil {
			c := id.TLS(t)
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	listeners := func(conn *grpc.ClientConn, node string) ([]string, error) {
		var names []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			c := sotw.NewADSClient(ctx, &corev3.Node{Id: node}, resource.ListenerType)
			err := c.InitConnect(conn)
			var resp *sotw.Response
			if err == nil {
				resp, err = c.Fetch()
			}
			if status.Code(err) == codes.Unavailable && time.Now().Before(deadline) && node == "n1" {
				time.Sleep(20 * time.Millisecond) // the server is still starting
				continue
			}
			if err != nil {
				return nil, err
			}
			for _, a := range resp.Resources {
				var l listenerv3.Listener
				a.UnmarshalTo(&l)
				names = append(names, l.GetName())
			}
			return names, nil
		}
	}
	n1 := dial(ptr(ca.Issue(t, tlstest.Leaf{DNS: []string{"n1"}, Client: true})))
	if got, err := listeners(n1, "n1"); err != nil || !cmp.Equal(got, []string{"metadata-network-" + id1 + "-ipv4"}) {
		t.Errorf("n1's certificate, n1: %v, %v", got, err)
	}
	if got, err := listeners(n1, "n2"); status.Code(err) != codes.PermissionDenied || len(got) > 0 {
		t.Errorf("n1's certificate, n2: %v, %v; want PermissionDenied", got, err)
	}
	if got, err := listeners(dial(nil), "n2"); err == nil || len(got) > 0 {
		t.Errorf("no certificate: %v, %v", got, err)
	}
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{MetricConnectionsRefused + `{reason="node_id"} 1`, MetricConnectionsRefused + `{reason="tls"} `} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func ptr[T any](v T) *T { return &v }
