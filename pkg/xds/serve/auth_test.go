package serve

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// tlsServer is a real xDS server with mutual TLS and a NodeAuthorizer, serving node-a and node-b.
type tlsServer struct {
	addr string
	ca   *tlstest.CA
	logs *syncBuffer
}

func startTLS(t *testing.T, binding string) *tlsServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &tlsServer{ca: tlstest.NewCA(t, "metaproxy lab CA"), logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	snaps := NewSnapshots(log)
	poller := &Poller{Source: &fakeSource{nodes: source.Nodes{"node-a": nets(netA), "node-b": nets(netB)}}, Shared: sh, Snapshots: snaps, Interval: time.Hour, Log: log}
	if err := poller.Once(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := s.ca.Issue(t, tlstest.Leaf{DNS: []string{"xds.metaproxy.test"}, Server: true}).Write(t, dir, "xds")
	srv, err := tlsfiles.NewServer(tlsfiles.Files{Cert: cert, Key: key, ClientCA: s.ca.WritePEM(t, filepath.Join(dir, "ca.crt"))}, tlsfiles.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseNodeBinding(binding)
	if err != nil {
		t.Fatal(err)
	}
	refusals, _ := listen.NewRefusals(log, nil, "")
	opts := append([]grpc.ServerOption{grpc.Creds(srv.Credentials(nil))}, NewNodeAuthorizer(b, refusals).ServerOptions()...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, NewGRPCServer(ctx, snaps, NewCallbacks(log, snaps), opts...), lis, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// conn dials the server as the holder of id (nil: without a client certificate).
func (s *tlsServer) conn(t *testing.T, id *tlstest.Issued) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.ca.Pool(), ServerName: "xds.metaproxy.test"}
	if id != nil {
		c := id.TLS(t)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// sotwListeners asks for node's listeners over state-of-the-world ADS.
func sotwListeners(t *testing.T, conn *grpc.ClientConn, node string) ([]string, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c := sotw.NewADSClient(ctx, &corev3.Node{Id: node}, resource.ListenerType)
	if err := c.InitConnect(conn); err != nil {
		return nil, err
	}
	resp, err := c.Fetch()
	if err != nil {
		return nil, err
	}
	return listenerNames(t, resp.Resources), nil
}

// deltaListeners asks for node's listeners over delta ADS; with switchTo, a second request on the
// same stream names that node instead.
func deltaListeners(t *testing.T, conn *grpc.ClientConn, node, switchTo string) ([]string, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType}); err != nil {
		return nil, err
	}
	resp, err := st.Recv()
	if err != nil {
		return nil, err
	}
	var rs []string
	for _, r := range resp.GetResources() {
		rs = append(rs, r.GetName())
	}
	if switchTo != "" {
		st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: switchTo}, TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce()})
		_, err := st.Recv()
		return rs, err
	}
	return rs, nil
}

func permissionDenied(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("%s: %v, want PermissionDenied", what, err)
	}
}

// TestNodeCertificateFetchesOnlyItsOwnListeners: with the dns rule, node-a's certificate gets
// node-a's listeners, over state of the world and delta, and not node-b's, nor an invented node's;
// a stream cannot switch to another node after its first request, nor start without a node id.
func TestNodeCertificateFetchesOnlyItsOwnListeners(t *testing.T) {
	s := startTLS(t, "dns")
	a := s.conn(t, ptr(s.ca.Issue(t, tlstest.Leaf{DNS: []string{"node-a"}, Client: true})))

	got, err := sotwListeners(t, a, "node-a")
	if err != nil || !cmp.Equal(got, []string{v4(netA)}) {
		t.Errorf("node-a's own listeners over SotW: %v, %v", got, err)
	}
	got, err = deltaListeners(t, a, "node-a", "")
	if err != nil || !cmp.Equal(got, []string{v4(netA)}) {
		t.Errorf("node-a's own listeners over delta: %v, %v", got, err)
	}
	got, err = sotwListeners(t, a, "node-b")
	permissionDenied(t, "node-a's certificate asking SotW for node-b", err)
	if len(got) > 0 {
		t.Errorf("node-a's certificate got node-b's listeners: %v", got)
	}
	_, err = deltaListeners(t, a, "node-b", "")
	permissionDenied(t, "node-a's certificate asking delta for node-b", err)
	_, err = sotwListeners(t, a, "invented-node")
	permissionDenied(t, "an invented node id", err)
	_, err = deltaListeners(t, a, "node-a", "node-b")
	permissionDenied(t, "switching to node-b within the stream", err)
	_, err = deltaListeners(t, a, "", "")
	permissionDenied(t, "a first request without a node id", err)

	// The per-type services and their unary Fetch are bound the same way.
	_, err = listenerservice.NewListenerDiscoveryServiceClient(a).FetchListeners(t.Context(), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "node-b"}})
	permissionDenied(t, "FetchListeners for node-b", err)

	if !strings.Contains(s.logs.String(), "xDS request refused") || !strings.Contains(s.logs.String(), `node-b`) {
		t.Errorf("refusals not logged:\n%s", s.logs)
	}
}

func TestXDSWithoutAValidClientCertificateIsRefused(t *testing.T) {
	s := startTLS(t, "dns")
	other := tlstest.NewCA(t, "another CA")
	for name, id := range map[string]*tlstest.Issued{
		"no client certificate":     nil,
		"certificate of another CA": ptr(other.Issue(t, tlstest.Leaf{DNS: []string{"node-a"}, Client: true})),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := sotwListeners(t, s.conn(t, id), "node-a")
			if err == nil || status.Code(err) != codes.Unavailable || len(got) > 0 {
				t.Errorf("listeners %v, %v; want the handshake refused (Unavailable)", got, err)
			}
		})
	}
}

func TestSPIFFEAndNoneBindings(t *testing.T) {
	s := startTLS(t, "spiffe://lab.example")
	a := s.conn(t, ptr(s.ca.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://lab.example/metaproxy/node/node-a"}, Client: true})))
	if got, err := sotwListeners(t, a, "node-a"); err != nil || !cmp.Equal(got, []string{v4(netA)}) {
		t.Errorf("SPIFFE id of node-a: %v, %v", got, err)
	}
	_, err := sotwListeners(t, a, "node-b")
	permissionDenied(t, "SPIFFE id of node-a asking for node-b", err)
	dnsOnly := s.conn(t, ptr(s.ca.Issue(t, tlstest.Leaf{DNS: []string{"node-a"}, Client: true})))
	_, err = sotwListeners(t, dnsOnly, "node-a")
	permissionDenied(t, "a DNS SAN under the spiffe rule", err)
	otherTD := s.conn(t, ptr(s.ca.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://elsewhere.example/metaproxy/node/node-a"}, Client: true})))
	_, err = sotwListeners(t, otherTD, "node-a")
	permissionDenied(t, "another trust domain", err)

	n := startTLS(t, "none")
	shared := n.conn(t, ptr(n.ca.Issue(t, tlstest.Leaf{DNS: []string{"metaproxy-node"}, Client: true})))
	for _, node := range []string{"node-a", "node-b"} {
		if _, err := sotwListeners(t, shared, node); err != nil {
			t.Errorf("rule none, %s: %v", node, err)
		}
	}
}

func TestParseNodeBinding(t *testing.T) {
	for _, ok := range []string{"dns", "none", "spiffe://example.org"} {
		if b, err := ParseNodeBinding(ok); err != nil || b.String() != ok {
			t.Errorf("%s: %v, %v", ok, b, err)
		}
	}
	for _, bad := range []string{"", "DNS", "spiffe://", "spiffe://Example.org", "spiffe://example.org/path", "uri"} {
		if _, err := ParseNodeBinding(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func ptr[T any](v T) *T { return &v }
