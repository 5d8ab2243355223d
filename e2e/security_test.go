//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/listen/listentest"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
)

// metricValue returns the sum of the series of name whose line contains every label in labels,
// from the /metrics of admin.
func metricValue(t *testing.T, admin, name string, labels ...string) float64 {
	t.Helper()
	_, body, err := httpGet("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
next:
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		var v float64
		fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
		sum += v
	}
	return sum
}

// askSignature runs one ext_proc stream, as Envoy would for the VM at ip on network, over conn,
// and returns the instance it was signed as.
func askSignature(ctx context.Context, conn *grpc.ClientConn, network, ip string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := extprocv3.NewExternalProcessorClient(conn).Process(metadata.AppendToOutgoingContext(ctx, contract.NetworkIDMetadata, network))
	if err != nil {
		return "", err
	}
	if err := st.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(ip + ":40000")}}},
	}); err != nil {
		return "", err
	}
	resp, err := st.Recv()
	if err != nil {
		return "", err
	}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if strings.EqualFold(h.GetHeader().GetKey(), "x-instance-id") {
			return string(h.GetHeader().GetRawValue()), nil
		}
	}
	return "", fmt.Errorf("no signed answer: %v", resp)
}

// TestE2ESignatureClientChild is a plain gRPC client, not Envoy, that asks cmd/extproc for a
// VM's signature; onlyTheNodesEnvoyGetsSignatures runs it as another user.
func TestE2ESignatureClientChild(t *testing.T) {
	if !listentest.IsChild() {
		t.Skip("run by TestMetadataPath as another user")
	}
	conn, err := grpc.NewClient("unix://"+os.Getenv("SOCK"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("client:", err)
		os.Exit(2)
	}
	defer conn.Close()
	id, err := askSignature(context.Background(), conn, os.Getenv("NETWORK"), os.Getenv("IP"))
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println("signed as", id)
}

// onlyTheNodesEnvoyGetsSignatures attacks cmd/extproc's UNIX socket from another user of the
// node (nobody): the socket's mode keeps it out; with the mode opened up, the peer check closes
// its connection before a request is read; nothing is signed and nothing reaches nova. A plain
// TCP cmd/extproc does not even start without --demo.
func onlyTheNodesEnvoyGetsSignatures(t *testing.T, e *env) {
	a1 := e.vms["a1"]
	before := len(e.recorder.all())
	refusedBefore := metricValue(t, e.extprocAdmin, "metaproxy_extproc_connections_refused_total", `reason="peer_credentials"`)
	child := []string{"SOCK=" + e.extprocSock, "NETWORK=" + e.nets["net-a"].ID, "IP=" + a1.os.IP}

	out, err := listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestE2ESignatureClientChild", child...)
	if err != nil || !strings.Contains(out, "refused:") || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody against the 0660 socket: %v\n%s", err, out)
	}
	if err := os.Chmod(e.extprocSock, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestE2ESignatureClientChild", child...)
	os.Chmod(e.extprocSock, 0o660)
	if err != nil || !strings.Contains(out, "refused:") || strings.Contains(out, "signed as") {
		t.Errorf("nobody against an opened-up socket: %v\n%s", err, out)
	}
	if got := metricValue(t, e.extprocAdmin, "metaproxy_extproc_connections_refused_total", `reason="peer_credentials"`); got <= refusedBefore {
		t.Errorf("refused peers counted: %v -> %v", refusedBefore, got)
	}
	if !strings.Contains(e.extproc.logs(), `uid=65534 gid=65534`) {
		t.Errorf("the refused peer is not in the extproc log")
	}
	if after := len(e.recorder.all()); after != before {
		t.Errorf("%d requests reached nova during the attack", after-before)
	}
	// The node's Envoy is still served.
	ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil))

	// cmd/extproc on plain TCP refuses to start, and says what to configure.
	cmd := exec.Command(filepath.Join(e.bin, "extproc"), "--listen", "127.0.0.1:0", "--admin-listen", "", "--neutron-url", e.cloud.NeutronURL(), "--metadata-agent-ini", e.ini)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--tls-cert, --tls-key and --tls-client-ca") {
		t.Errorf("extproc on plain TCP: %v\n%s", err, out)
	}
}

// xdsListeners asks cmd/xds for node's listeners over state-of-the-world ADS, presenting id (nil:
// no client certificate).
func (e *env) xdsListeners(t *testing.T, id *tls.Certificate, node string) ([]string, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1"}
	if id != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return id, nil }
	}
	conn, err := grpc.NewClient(e.xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := sotw.NewADSClient(ctx, &corev3.Node{Id: node}, resource.ListenerType)
	if err := c.InitConnect(conn); err != nil {
		return nil, err
	}
	resp, err := c.Fetch()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, a := range resp.Resources {
		var l listenerv3.Listener
		a.UnmarshalTo(&l)
		names = append(names, l.GetName())
	}
	return names, nil
}

// onlyAnAuthenticatedEnvoyGetsConfiguration attacks cmd/xds: without a client certificate, with
// one of another CA, or with another node's certificate, nothing of this node's configuration is
// served; the node's own certificate gets its listeners.
func onlyAnAuthenticatedEnvoyGetsConfiguration(t *testing.T, e *env) {
	own, err := tls.LoadX509KeyPair(filepath.Join(e.pki.envoyDir, "envoy.crt"), filepath.Join(e.pki.envoyDir, "envoy.key"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.xdsListeners(t, &own, nodeID); err != nil || !strings.Contains(strings.Join(got, " "), listenerName(e.nets["net-a"])) {
		t.Errorf("the node's own certificate: %v, %v", got, err)
	}
	other := tlstest.NewCA(t, "an attacker's CA").Issue(t, tlstest.Leaf{DNS: []string{nodeID}, Client: true}).TLS(t)
	neighbour := e.pki.ca.Issue(t, tlstest.Leaf{DNS: []string{"other-node"}, Client: true}).TLS(t)
	for name, tc := range map[string]struct {
		id   *tls.Certificate
		code codes.Code
	}{
		"no client certificate":      {nil, codes.Unavailable},
		"another CA's certificate":   {&other, codes.Unavailable},
		"another node's certificate": {&neighbour, codes.PermissionDenied},
	} {
		got, err := e.xdsListeners(t, tc.id, nodeID)
		if status.Code(err) != tc.code || len(got) > 0 {
			t.Errorf("%s: listeners %v, %v; want %s and nothing", name, got, err, tc.code)
		}
	}
}

// extprocOverTCPWithMutualTLS moves cmd/extproc to TCP with mutual TLS: cmd/xds sends Envoy there
// with the node's certificate (the extproc cluster's UpstreamTlsContext), VMs get their metadata
// signed through it, and TCP clients without a valid certificate are refused. Then back to the
// UNIX socket.
func extprocOverTCPWithMutualTLS(t *testing.T, e *env) {
	a1, b1 := e.vms["a1"], e.vms["b1"]
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	argv := append([]string{filepath.Join(e.bin, "extproc"), "--admin-listen", admin,
		"--metadata-agent-ini", e.ini, "--log-format", "json"}, e.pki.extprocTCPArgs(addr)...)
	tcp := startProc(t, e.dir, "extproc-tcp", e.creds.env, append(argv, e.creds.extproc...)...)
	defer tcp.stop()
	eventually(t, 30*time.Second, "extproc on TCP ready", func() error { return ready("http://" + admin + "/readyz") })

	e.restartXDS(t, "--extproc-address", addr)
	e.extproc.stop() // from now on only the TCP one can sign
	eventually(t, 30*time.Second, "metadata through the TCP extproc", func() error {
		r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if r.Status != 200 {
			return fmt.Errorf("%d %s", r.Status, r.Body)
		}
		return nil
	})
	ownMetadata(t, b1, e.curl(t, b1, "GET", "/openstack/latest/meta_data.json", nil, nil))
	if n := metricValue(t, admin, "metaproxy_extproc_requests_total", `status="200"`); n < 2 {
		t.Errorf("the TCP extproc decided %v requests, want the VMs'", n)
	}

	attacker := tlstest.NewCA(t, "attacker").Issue(t, tlstest.Leaf{DNS: []string{nodeID}, Client: true}).TLS(t)
	for name, tc := range map[string]struct {
		tls  bool
		cert *tls.Certificate
	}{
		"plain text":                {},
		"TLS without a certificate": {tls: true},
		"another CA's certificate":  {tls: true, cert: &attacker},
	} {
		creds := insecure.NewCredentials()
		if tc.tls {
			cfg := &tls.Config{RootCAs: e.pki.ca.Pool(), ServerName: "127.0.0.1"}
			if tc.cert != nil {
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.cert, nil }
			}
			creds = credentials.NewTLS(cfg)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		if id, err := askSignature(context.Background(), conn, e.nets["net-a"].ID, a1.os.IP); err == nil {
			t.Errorf("%s: signed as %s", name, id)
		}
		conn.Close()
	}
	if n := metricValue(t, admin, "metaproxy_extproc_connections_refused_total", `reason="tls"`); n < 3 {
		t.Errorf("refused TLS clients counted: %v, want 3", n)
	}

	// Back to the UNIX socket for the scenarios after this one.
	if err := e.extproc.start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "extproc on its socket again", func() error { return ready("http://" + e.extprocAdmin + "/readyz") })
	e.restartXDS(t)
	tcp.stop()
	eventually(t, 30*time.Second, "metadata through the UNIX socket again", func() error {
		if r := e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Status != 200 {
			return fmt.Errorf("%d %s", r.Status, r.Body)
		}
		return nil
	})
}

// restartXDS restarts cmd/xds with its usual flags plus extra (later flags win), and waits until
// it is ready.
func (e *env) restartXDS(t *testing.T, extra ...string) {
	t.Helper()
	e.xds.stop()
	e.xds.argv = append(append([]string(nil), e.xdsArgs...), extra...)
	if err := e.xds.start(); err != nil {
		t.Fatal(err)
	}
	admin := flagValue(e.xdsArgs, "--admin-listen")
	eventually(t, 30*time.Second, "xds ready again", func() error { return ready("http://" + admin + "/readyz") })
}
