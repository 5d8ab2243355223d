package bootstrap_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/standin"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/bootstrap"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// lab is a node's Envoy side and a running cmd/xds with mutual TLS, as the docs set them up.
type lab struct {
	dir, xds string
	ca       *tlstest.CA
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{dir: t.TempDir(), xds: freeAddr(t), ca: tlstest.NewCA(t, "metaproxy lab CA")}
	cert, key := l.ca.Issue(t, tlstest.Leaf{IPs: []string{"127.0.0.1"}, Server: true}).Write(t, l.dir, "xds")
	caFile := l.ca.WritePEM(t, filepath.Join(l.dir, "ca.crt"))
	networks := filepath.Join(l.dir, "networks.yaml")
	os.WriteFile(networks, []byte("nodes:\n  node-1: []\n  node-2: []\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- xdscmd.Main(ctx, []string{"--listen", l.xds, "--admin-listen", "", "--networks-file", networks,
			"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", caFile}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds: %v", err)
		}
	})
	return l
}

// envoy writes the node's TLS directory (its certificate for certNode, `xds sds`) and the
// bootstrap `xds bootstrap --node-id node` prints, and returns the bootstrap's path.
func (l *lab) envoy(t *testing.T, node, certNode string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	os.Mkdir(dir, 0o755)
	l.ca.Issue(t, tlstest.Leaf{DNS: []string{certNode}, Client: true}).Write(t, dir, "envoy")
	l.ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	var out bytes.Buffer
	if err := xdscmd.Main(context.Background(), []string{"sds", "--sds-dir", dir}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := xdscmd.Main(context.Background(), []string{"bootstrap", "--node-id", node, "--xds-address", l.xds, "--sds-dir", dir, "--admin-port", "9901"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(dir), "envoy.yaml")
	os.WriteFile(path, out.Bytes(), 0o644)
	return path
}

// run runs the stand-in on a bootstrap (its admin on a listener of the test) and returns the
// admin address and the stand-in's log.
func run(t *testing.T, boot string) (string, *syncBuffer) {
	t.Helper()
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- standin.Run(ctx, standin.Config{Bootstrap: boot, AdminListener: aln}, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("standin: %v", err)
		}
	})
	return aln.Addr().String(), logs
}

func get(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStandinFromTheBootstrapOverMutualTLS: the stand-in started on `xds bootstrap` output alone
// (node, admin, ADS cluster, TLS from `xds sds` files) gets its configuration from cmd/xds over
// mutual TLS; a bootstrap naming another node than its certificate gets nothing.
func TestStandinFromTheBootstrapOverMutualTLS(t *testing.T) {
	l := newLab(t)
	b, err := bootstrap.Load(l.envoy(t, "node-1", "node-1"), bootstrap.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if b.NodeID != "node-1" || b.Admin != "127.0.0.1:9901" || !b.Delta || !b.NodeOnFirstMessageOnly || b.XDS.TLS == nil {
		t.Errorf("bootstrap read as %+v", b)
	}

	admin, _ := run(t, l.envoy(t, "node-1", "node-1"))
	waitFor(t, "the stand-in live with node-1's configuration", func() bool {
		code, body := get(admin, "/ready")
		return code == http.StatusOK && strings.Contains(body, "LIVE")
	})
	if _, dump := get(admin, "/config_dump"); !strings.Contains(dump, "nova_metadata") || !strings.Contains(dump, "extproc") {
		t.Errorf("clusters from cmd/xds not applied:\n%s", dump)
	}

	admin, logs := run(t, l.envoy(t, "node-2", "node-1"))
	waitFor(t, "the refusal", func() bool { return strings.Contains(logs.String(), "PermissionDenied") })
	if code, _ := get(admin, "/ready"); code == http.StatusOK {
		t.Error("node-1's certificate got node-2's configuration")
	}
}

func TestBootstrapRefusesWhatTheStandinDoesNotImplement(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ yaml, want string }{
		"google_grpc": {`node: {id: n}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{google_grpc: {target_uri: "x:1", stat_prefix: x}}]}
  lds_config: {ads: {}}
  cds_config: {ads: {}}`, "google_grpc"},
		"missing cluster": {`node: {id: n}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}}
  cds_config: {ads: {}}`, `"xds" is not among`},
		"no node": {`dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}}
  cds_config: {ads: {}}`, "node.id is empty"},
		"unknown field": {`node: {id: n}
nonsense: 1`, "nonsense"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(p, []byte(tc.yaml), 0o644)
		if _, err := bootstrap.Load(p, bootstrap.Overrides{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error saying %q", name, err, tc.want)
		}
	}
	// Envoy's --service-node and --service-cluster override the bootstrap's node.
	raw, err := xdscmd.Bootstrap(xdscmd.BootstrapOptions{NodeID: "in-file", XDSAddress: "unix:///run/metaproxy/xds.sock", AdminPort: 9901, APIType: "GRPC", Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "plain.yaml")
	os.WriteFile(p, raw, 0o644)
	b, err := bootstrap.Load(p, bootstrap.Overrides{ServiceNode: "from-flag", ServiceCluster: "c"})
	if err != nil || b.NodeID != "from-flag" || b.NodeCluster != "c" || b.Delta || b.XDS.TLS != nil || b.XDS.Endpoints[0].Network != "unix" {
		t.Errorf("plain-text bootstrap with overrides: %+v, %v", b, err)
	}
}
