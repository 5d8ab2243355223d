package extproccmd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/listen/listentest"
	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
)

// decideOnce runs one ext_proc stream for demo VM 10.0.0.5 on network A over conn and returns the
// instance id it was signed as.
func decideOnce(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := extprocv3.NewExternalProcessorClient(conn).Process(metadata.AppendToOutgoingContext(ctx, contract.NetworkIDMetadata, demo.NetworkA))
	if err != nil {
		return "", err
	}
	if err := st.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue("10.0.0.5:40000")}}},
	}); err != nil {
		return "", err
	}
	resp, err := st.Recv()
	if err != nil {
		return "", err
	}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == decide.HeaderInstanceID {
			return string(h.GetHeader().GetRawValue()), nil
		}
	}
	return "", fmt.Errorf("no signed answer: %v", resp)
}

// TestPeerOutsideTheAllowListGetsNothingSigned runs cmd/extproc on a UNIX socket and a client as
// another user (nobody). With the socket's own mode that user cannot even connect; with the mode
// opened up (a mistake an operator could make), the peer check closes its connection before any
// request is read: no decision is made, the refusal is logged and counted. root, allowed by
// default, is served.
func TestPeerOutsideTheAllowListGetsNothingSigned(t *testing.T) {
	sock := filepath.Join(listentest.SharedDir(t), "extproc.sock")
	r := run(t, "--listen", "unix://"+sock)

	out, err := listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestExtprocClientChild", "SOCK="+sock)
	if err != nil || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody with the socket's mode 0660: %v\n%s", err, out)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestExtprocClientChild", "SOCK="+sock)
	if err != nil || !strings.Contains(out, "refused:") || strings.Contains(out, "signed as") {
		t.Fatalf("nobody on an open socket: %v\n%s", err, out)
	}
	m := scrape(t, r.admin)
	if v := value(m, MetricConnectionsRefused, "reason=peer_credentials"); v < 1 {
		t.Errorf("%s{reason=peer_credentials} = %v, want at least 1", MetricConnectionsRefused, v)
	}
	if v := value(m, decide.MetricRequests); v != 0 {
		t.Errorf("%s = %v after a refused peer: something was decided", decide.MetricRequests, v)
	}
	if !strings.Contains(r.logs.String(), `"uid=65534 gid=65534"`) && !strings.Contains(r.logs.String(), "peer=\"uid=65534 gid=65534\"") {
		t.Errorf("the refused peer is not logged:\n%s", r.logs)
	}

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if id, err := decideOnce(context.Background(), conn); err != nil || id != demo.InstanceA5 {
		t.Errorf("root, an allowed peer: %q, %v", id, err)
	}
}

// TestExtprocClientChild is the client TestPeerOutsideTheAllowListGetsNothingSigned runs as another user.
func TestExtprocClientChild(t *testing.T) {
	if !listentest.IsChild() {
		t.Skip("run by TestPeerOutsideTheAllowListGetsNothingSigned")
	}
	conn, err := grpc.NewClient("unix://"+os.Getenv("SOCK"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("client:", err)
		os.Exit(2)
	}
	defer conn.Close()
	id, err := decideOnce(context.Background(), conn)
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println("signed as", id)
}

// TestTCPServesOnlyMutualTLS runs cmd/extproc on TCP with mutual TLS and a client SAN allow-list:
// Envoy's certificate gets a signature; no certificate, another CA's, or a SAN not allowed get a
// failed handshake and nothing decided, each counted.
func TestTCPServesOnlyMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, other := tlstest.NewCA(t, "metaproxy lab CA"), tlstest.NewCA(t, "someone else's CA")
	cert, key := ca.Issue(t, tlstest.Leaf{DNS: []string{"extproc.metaproxy.test"}, Server: true}).Write(t, dir, "extproc")
	caFile := ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	r := run(t, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", caFile, "--tls-client-san", "envoy.node-1,spiffe://lab/metaproxy/node/node-2")
	addr := r.listen

	dial := func(id *tlstest.Issued) (*grpc.ClientConn, error) {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "extproc.metaproxy.test"}
		if id != nil {
			c := id.TLS(t)
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	envoy := ca.Issue(t, tlstest.Leaf{DNS: []string{"envoy.node-1"}, Client: true})
	spiffe := ca.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://lab/metaproxy/node/node-2"}, Client: true})
	for name, id := range map[string]*tlstest.Issued{"DNS SAN": &envoy, "URI SAN": &spiffe} {
		conn, err := dial(id)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := decideOnce(context.Background(), conn); err != nil || got != demo.InstanceA5 {
			t.Errorf("%s allowed: %q, %v", name, got, err)
		}
		conn.Close()
	}
	decided := value(scrape(t, r.admin), decide.MetricRequests, "status=200")

	foreign := other.Issue(t, tlstest.Leaf{DNS: []string{"envoy.node-1"}, Client: true})
	notAllowed := ca.Issue(t, tlstest.Leaf{DNS: []string{"intruder"}, Client: true})
	for name, id := range map[string]*tlstest.Issued{"no certificate": nil, "another CA": &foreign, "SAN not allowed": &notAllowed} {
		conn, err := dial(id)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := decideOnce(context.Background(), conn); err == nil {
			t.Errorf("%s: signed as %s", name, got)
		}
		conn.Close()
	}
	// The server counts a refused handshake once its own side of it ends, which may be after the
	// client saw the failure.
	waitFor(t, func() bool { return value(scrape(t, r.admin), MetricConnectionsRefused, "reason=tls") >= 3 })
	if v := value(scrape(t, r.admin), decide.MetricRequests, "status=200"); v != decided {
		t.Errorf("refused clients were decided for: %v -> %v", decided, v)
	}
	// Logged once for the client host (then at most once a minute), counted every time.
	if n := strings.Count(r.logs.String(), "TLS handshake failed"); n != 1 {
		t.Errorf("%d log lines for 3 refused handshakes from one host, want 1:\n%s", n, r.logs)
	}
}

// TestPlainTCPStartsOnlyWithDemo: TCP without TLS fails at start with what to configure, unless
// --demo; misconfigured TLS and peers are all reported at once.
func TestPlainTCPStartsOnlyWithDemo(t *testing.T) {
	ports := writeFile(t, "ports.json", string(demo.Ports()))
	t.Setenv(SecretEnv, "s")
	err := Main(context.Background(), []string{"--listen", "127.0.0.1:0", "--ports-file", ports, "--admin-listen", ""}, io.Discard, io.Discard)
	for _, want := range []string{"is TCP", "--tls-cert, --tls-key and --tls-client-ca", "unix:///run/metaproxy/extproc.sock", "--demo"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("plain TCP: %v; want it to say %q", err, want)
		}
	}

	dir := t.TempDir()
	open := filepath.Join(dir, "key")
	os.WriteFile(open, []byte("x"), 0o644)
	err = Main(context.Background(), []string{"--listen", "127.0.0.1:0", "--ports-file", ports, "--admin-listen", "",
		"--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", open, "--tls-client-ca", filepath.Join(dir, "missing-ca.crt"), "--cache-size", "0"}, io.Discard, io.Discard)
	for _, want := range []string{"--tls-cert", "--tls-client-ca", "--cache-size"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad TLS files: %v; want it to name %q", err, want)
		}
	}
	err = Main(context.Background(), []string{"--listen", "unix://" + filepath.Join(dir, "s.sock"), "--ports-file", ports, "--admin-listen", "",
		"--allowed-peers", "root,no-such-user-here,group:no-such-group-here", "--tls-cert", "x"}, io.Discard, io.Discard)
	for _, want := range []string{"no-such-user-here", "no-such-group-here", "TLS is for a TCP listener", "go together"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad peers: %v; want it to name %q", err, want)
		}
	}

	// make run: --demo on plain TCP.
	r := run(t, "--demo", "--listen", "127.0.0.1:0")
	if _, err := decideOnce(context.Background(), r.dial(t)); err != nil {
		t.Errorf("--demo on plain TCP: %v", err)
	}
	if !strings.Contains(r.logs.String(), "plain-text TCP (--demo)") {
		t.Errorf("no warning for plain TCP in demo mode:\n%s", r.logs)
	}
}

func TestSecretFromEnvIsRemovedAndOpenFilesRefused(t *testing.T) {
	t.Setenv(SecretEnv, "from-env")
	s, from, err := loadSecret(Config{}, "")
	if err != nil || string(s) != "from-env" {
		t.Fatalf("secret %q from %s, %v", s, from, err)
	}
	if _, still := os.LookupEnv(SecretEnv); still {
		t.Errorf("$%s is still in the environment after it was read", SecretEnv)
	}
	t.Setenv(SecretEnv, "ignored")
	open := writeFile(t, "secret", "s3cret\n")
	os.Chmod(open, 0o644)
	_, _, err = loadSecret(Config{SecretFile: open}, "")
	if err == nil || !strings.Contains(err.Error(), "chmod o-rwx") {
		t.Errorf("a world-readable secret file: %v", err)
	}
	if _, still := os.LookupEnv(SecretEnv); still {
		t.Errorf("$%s stays in the environment when a file gives the secret", SecretEnv)
	}
	ini := writeFile(t, "metadata_agent.ini", "[DEFAULT]\nmetadata_proxy_shared_secret = x\n")
	os.Chmod(ini, 0o644)
	if _, _, err := loadSecret(Config{MetadataAgentINI: ini}, "x"); err == nil || !errors.Is(err, os.ErrPermission) && !strings.Contains(err.Error(), "readable by other users") {
		t.Errorf("a world-readable metadata_agent.ini holding the secret: %v", err)
	}
}
