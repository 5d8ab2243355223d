package load

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

func TestFleetValidate(t *testing.T) {
	tests := map[string]struct {
		f    Fleet
		want []string
	}{
		"ok":              {f: Fleet{Nodes: 5000, Networks: 10, AgentsPerNetwork: 2}},
		"no networks":     {f: Fleet{Nodes: 1, Networks: 0, AgentsPerNetwork: 1}},
		"too many nodes":  {f: Fleet{Nodes: maxFleetNodes + 1, Networks: 1, AgentsPerNetwork: 1}, want: []string{"nodes 10001"}},
		"negative":        {f: Fleet{Nodes: 0, Networks: -1, AgentsPerNetwork: 0}, want: []string{"nodes 0", "networks -1", "agents per network 0"}},
		"share too wide":  {f: Fleet{Nodes: 3, Networks: 1, AgentsPerNetwork: 4}, want: []string{"agents per network 4"}},
		"too much in all": {f: Fleet{Nodes: 10000, Networks: 100, AgentsPerNetwork: 1, IPv6: true}, want: []string{"2020000 listeners"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.f.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestFleetFileIsWhatNodesExpect: the networks file, parsed by cmd/xds's own parser, gives every
// node exactly the networks whose listeners the recorder waits for, before and after the change.
func TestFleetFileIsWhatNodesExpect(t *testing.T) {
	f := Fleet{Nodes: 5, Networks: 3, AgentsPerNetwork: 2, IPv6: true}
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	for _, changed := range []bool{false, true} {
		var buf bytes.Buffer
		if err := f.WriteNetworksFile(&buf, changed); err != nil {
			t.Fatal(err)
		}
		nodes, err := source.ParseNetworks(buf.Bytes(), "")
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != f.Nodes {
			t.Fatalf("%d nodes in the file, want %d", len(nodes), f.Nodes)
		}
		for i := range f.Nodes {
			res, err := sh.Node(nodes[f.NodeID(i)])
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, l := range res.Listeners {
				got[l.GetName()] = l.GetAddress().GetSocketAddress().GetNetworkNamespaceFilepath()
			}
			if diff := cmp.Diff(f.ExpectedListeners(i, changed), got); diff != "" {
				t.Errorf("node %d changed=%v: listeners cmd/xds makes (-expected +got):\n%s", i, changed, diff)
			}
		}
	}
	// Nodes 0 and 1 share their networks, node 2 has others; the change adds one to each.
	n0, n1, n2 := f.NetworkIDs(0, true), f.NetworkIDs(1, true), f.NetworkIDs(2, true)
	if !cmp.Equal(n0, n1) || cmp.Equal(n0, n2) || len(n0) != 4 || len(f.NetworkIDs(0, false)) != 3 {
		t.Errorf("network ids: node 0 %v, node 1 %v, node 2 %v", n0, n1, n2)
	}
}

// nodeResources is what cmd/xds serves a node with these networks, packed as on the wire.
func nodeResources(t *testing.T, ids ...string) (clusters, listeners, routes map[string]*anypb.Any) {
	t.Helper()
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	var nets []source.Network
	for _, id := range ids {
		nets = append(nets, source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: source.NamespacePath(source.DefaultNetnsDir, resolve.KindNetwork, id)})
	}
	res, err := sh.Node(nets)
	if err != nil {
		t.Fatal(err)
	}
	pack := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	clusters, listeners, routes = map[string]*anypb.Any{}, map[string]*anypb.Any{}, map[string]*anypb.Any{}
	for _, c := range res.Clusters {
		clusters[c.GetName()] = pack(c)
	}
	for _, l := range res.Listeners {
		listeners[l.GetName()] = pack(l)
	}
	for _, r := range res.Routes {
		routes[r.GetName()] = pack(r)
	}
	return clusters, listeners, routes
}

func TestNodeRecorderPhases(t *testing.T) {
	f := Fleet{Nodes: 1, Networks: 2, AgentsPerNetwork: 1}
	ids := f.NetworkIDs(0, true)
	p := newFleetProgress(1)
	r := newNodeRecorder(f.NodeID(0), f.ExpectedListeners(0, false), f.ExpectedListeners(0, true), p)
	clusters, before, routes := nodeResources(t, ids[:2]...)
	_, after, _ := nodeResources(t, ids...)
	apply := func(typ string, res map[string]*anypb.Any) {
		t.Helper()
		if err := r.Apply(typ, res); err != nil {
			t.Fatalf("apply %s: %v", typ, err)
		}
	}
	reached := func(phase int) bool {
		select {
		case <-p.done[phase]:
			return true
		default:
			return false
		}
	}

	// A clusters-only snapshot first (what cmd/xds gives a node before its first poll ends).
	apply(xdsclient.ClusterType, clusters)
	apply(xdsclient.ListenerType, map[string]*anypb.Any{})
	if reached(phaseFull) {
		t.Fatal("full with no listeners")
	}
	apply(xdsclient.ListenerType, before)
	if got := r.Wanted(xdsclient.RouteType); !cmp.Equal(got, []string{"metadata"}) {
		t.Errorf("wanted routes %v, want [metadata] (what the listeners name)", got)
	}
	if reached(phaseFull) {
		t.Fatal("full before the route the listeners name")
	}
	apply(xdsclient.RouteType, routes)
	if !reached(phaseFull) || reached(phaseChanged) {
		t.Fatalf("after the route: full %v, changed %v; want full only", reached(phaseFull), reached(phaseChanged))
	}
	p.changeAt.Store(time.Now().UnixNano())
	r.received(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: xdsclient.ListenerType,
		Resources: []*discoveryv3.Resource{{Name: "x"}}, RemovedResources: []string{"y", "z"}})
	apply(xdsclient.ListenerType, after)
	if !reached(phaseChanged) {
		t.Fatal("the added listener did not complete the change phase")
	}
	rep := r.report()
	if rep.firstLDS != 0 || rep.expected != 2 || rep.changeRes[xdsclient.ListenerType] != 1 || rep.changeRemoved != 2 || len(rep.problems) != 0 {
		t.Errorf("report %+v: want first listener set 0 of 2, 1 listener and 2 removals for the change, no problems", rep)
	}
}

func TestNodeRecorderProblems(t *testing.T) {
	f := Fleet{Nodes: 1, Networks: 1, AgentsPerNetwork: 1}
	r := newNodeRecorder(f.NodeID(0), f.ExpectedListeners(0, false), f.ExpectedListeners(0, true), newFleetProgress(1))
	// The listener of the right network in another node's namespace path.
	id := f.NetworkIDs(0, false)[0]
	_, ls, routes := nodeResources(t, id)
	moved := map[string]*anypb.Any{}
	for name, a := range ls {
		var b bytes.Buffer
		b.Write(a.GetValue())
		raw := bytes.ReplaceAll(b.Bytes(), []byte("qdhcp-"+id), []byte("qdhcp-"+GenNetworkID(99)))
		moved[name] = &anypb.Any{TypeUrl: a.GetTypeUrl(), Value: raw}
	}
	if err := r.Apply(xdsclient.ListenerType, moved); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(xdsclient.RouteType, routes); err != nil {
		t.Fatal(err)
	}
	want := []string{"missing cluster " + "nova_metadata", "missing cluster extproc", "listener in the wrong namespace"}
	if diff := cmp.Diff(want, r.report().problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	// A listener that does not decode is refused, as Envoy NACKs it, and the last good set stays.
	bad := map[string]*anypb.Any{"metadata-network-x-ipv4": {TypeUrl: xdsclient.ListenerType, Value: []byte{0xff}}}
	if err := r.Apply(xdsclient.ListenerType, bad); err == nil {
		t.Fatal("undecodable listener accepted")
	}
	if rep := r.report(); rep.rejected != 1 || len(r.listeners) != 1 {
		t.Errorf("after a bad update: %d rejected, %d listeners; want 1 and the previous listener kept", rep.rejected, len(r.listeners))
	}
}

// TestObservedStreamCountsNACKs: the interceptor counts the requests that carry error_detail.
func TestObservedStreamCountsNACKs(t *testing.T) {
	r := newNodeRecorder("n", nil, nil, newFleetProgress(1))
	s := &observedStream{ClientStream: nopStream{}, r: r}
	for _, m := range []any{
		&discoveryv3.DiscoveryRequest{TypeUrl: xdsclient.ListenerType},
		&discoveryv3.DiscoveryRequest{TypeUrl: xdsclient.ListenerType, ErrorDetail: &statuspb.Status{Message: "bad"}},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdsclient.ListenerType, ErrorDetail: &statuspb.Status{Message: "bad"}},
	} {
		if err := s.SendMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.report().nacks; n != 2 {
		t.Errorf("%d NACKs counted, want 2", n)
	}
	r.streamError(context.Canceled)
	r.streamError(os.ErrClosed)
	if got := r.report().streamErr; !cmp.Equal(got, map[string]int{"Unknown": 1}) {
		t.Errorf("stream errors %v: want the one that is not the run's own cancel", got)
	}
}

type nopStream struct{ grpc.ClientStream }

func (nopStream) SendMsg(any) error { return nil }

func TestSummarize(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	reports := []nodeReport{
		{started: at(0), reached: [phases]time.Time{at(100), at(2100)}, expected: 3, firstLDS: 0,
			changeRes: map[string]int{xdsclient.ListenerType: 1}},
		{started: at(10), reached: [phases]time.Time{at(310), at(2300)}, expected: 3, firstLDS: 3,
			changeRes: map[string]int{xdsclient.ListenerType: 1, xdsclient.ClusterType: 2}, nacks: 1},
		{started: at(20), expected: 3, firstLDS: 1, problems: []string{"missing listener", "missing listener", "missing route metadata"},
			streamErr: map[string]int{"Unavailable": 2}, rejected: 1, lastError: "listener x: bad"},
	}
	var r XDSResult
	r.ChangeResources, r.Rejected, r.StreamErrors, r.Problems = map[string]ResourceCount{}, map[string]int{}, map[string]int{}, map[string]int{}
	r.summarize(reports, at(1500), at(2000))
	if r.NotFull != 1 || r.NotChanged != 1 || r.FewerFirst != 2 || r.EmptyFirst != 1 || r.NACKs != 1 {
		t.Errorf("counts: not full %d, not changed %d, fewer first %d, empty first %d, NACKs %d; want 1 1 2 1 1",
			r.NotFull, r.NotChanged, r.FewerFirst, r.EmptyFirst, r.NACKs)
	}
	if r.Full.N != 2 || r.Full.Max != 300*time.Millisecond || r.Change.Max != 300*time.Millisecond {
		t.Errorf("full %+v, change %+v: want 2 nodes, max 300ms each", r.Full, r.Change)
	}
	if r.AllChanged != 0 {
		t.Errorf("all changed %s with a node that never changed, want 0", r.AllChanged)
	}
	want := map[string]ResourceCount{"listeners": {Total: 2, PerNode: 1, MinNode: 0}, "clusters": {Total: 2, PerNode: 2, MinNode: 0}}
	if diff := cmp.Diff(want, r.ChangeResources); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"missing listener": 1, "missing route metadata": 1}, r.Problems); diff != "" {
		t.Errorf("problems counted once per node (-want +got):\n%s", diff)
	}
	if r.StreamErrors["Unavailable"] != 2 || r.Rejected["listener x: bad"] != 1 {
		t.Errorf("stream errors %v, rejected %v", r.StreamErrors, r.Rejected)
	}
	reports[2].reached = [phases]time.Time{at(400), at(2600)}
	r = XDSResult{ChangeResources: map[string]ResourceCount{}, Rejected: map[string]int{}, StreamErrors: map[string]int{}, Problems: map[string]int{}}
	r.summarize(reports, at(1500), at(2000))
	if r.PollWait != 500*time.Millisecond || r.AllChanged != 600*time.Millisecond || r.ChangeFromWrite != 1100*time.Millisecond {
		t.Errorf("poll wait %s, all changed %s, from the write %s; want 500ms, 600ms and 1.1s", r.PollWait, r.AllChanged, r.ChangeFromWrite)
	}
	// No open of the file seen: times count from the write.
	r = XDSResult{ChangeResources: map[string]ResourceCount{}, Rejected: map[string]int{}, StreamErrors: map[string]int{}, Problems: map[string]int{}}
	r.summarize(reports, at(1500), time.Time{})
	if r.PollWait != -1 || r.AllChanged != 1100*time.Millisecond || r.Change.Max != 1100*time.Millisecond {
		t.Errorf("unseen poll: poll wait %s, all changed %s, change %+v; want -1 and times from the write", r.PollWait, r.AllChanged, r.Change)
	}
}

func TestXDSOptionsValidate(t *testing.T) {
	o := XDSOptions{Fleet: Fleet{Nodes: 1, Networks: 1, AgentsPerNetwork: 1}, XDSBin: filepath.Join(t.TempDir(), "none"),
		XDSArgs: []string{"--log-level=warn", "--listen=0.0.0.0:18000", "-poll-interval", "5s"}, PollInterval: 500 * time.Millisecond,
		TLS: ClientTLS{Cert: "c.pem"}}
	err := o.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{"--listen=0.0.0.0:18000", "-poll-interval", "poll interval 500ms", "timeout 0s", "not found", "--tls-ca", "--tls-key"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "log-level") {
		t.Errorf("error %q refuses --log-level, which loadgen does not set", err)
	}
}

// TestWatchOpensFollowsTheRenamedFile: the watch is on the new file's inode, so cmd/xds opening it
// under the networks file's name, after the rename, is reported.
func TestWatchOpensFollowsTheRenamedFile(t *testing.T) {
	dir := t.TempDir()
	path, next := filepath.Join(dir, "networks.json"), filepath.Join(dir, "networks.json.new")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(next, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := watchOpens(next)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "new" {
		t.Fatal(string(b), err)
	}
	if _, ok := <-w.C; !ok {
		t.Fatal("the open of the renamed file was not reported")
	}
}

// TestClientTLS: the clients present their own node's certificate ({node} in the path) and verify
// the server against the CA.
func TestClientTLS(t *testing.T) {
	dir := t.TempDir()
	ca := writePKI(t, dir, "node-00000", "node-00001")
	server := ca.Issue(t, tlstest.Leaf{IPs: []string{"127.0.0.1"}, Server: true})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{server.TLS(t)}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})))
	seen := make(chan string, 2)
	healthpb.RegisterHealthServer(gs, &peerNames{seen: seen})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	defer gs.Stop()

	creds, err := ClientTLS{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "{node}.crt"), Key: filepath.Join(dir, "{node}.key")}.clientCredentials()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node-00000", "node-00001"} {
		tc, err := creds(n)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(tc))
		if err != nil {
			t.Fatal(err)
		}
		_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
		conn.Close()
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if got := <-seen; got != n {
			t.Errorf("server saw client certificate %q, want %q", got, n)
		}
	}
	if _, err := creds("node-00002"); err == nil {
		t.Error("a node without a certificate file got credentials")
	}
	plain, err := ClientTLS{}.clientCredentials()
	if err != nil {
		t.Fatal(err)
	}
	if tc, err := plain(""); err != nil || tc.Info().SecurityProtocol != "insecure" {
		t.Errorf("no TLS settings gave %v, %v; want plaintext", tc, err)
	}
}

// peerNames is a health server that reports the DNS name of every client certificate.
type peerNames struct {
	healthpb.UnimplementedHealthServer
	seen chan string
}

func (p *peerNames) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	pr, _ := peer.FromContext(ctx)
	p.seen <- pr.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].DNSNames[0]
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// writePKI writes a test CA to dir/ca.crt and, for every node, dir/<node>.crt and .key: a client
// certificate whose DNS SAN is the node id, as cmd/xds's default node binding wants.
func writePKI(t *testing.T, dir string, nodes ...string) *tlstest.CA {
	t.Helper()
	ca := tlstest.NewCA(t, "loadgen test CA")
	ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	for _, n := range nodes {
		ca.Issue(t, tlstest.Leaf{DNS: []string{n}, Client: true}).Write(t, dir, n)
	}
	return ca
}
