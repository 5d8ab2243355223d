package serve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

const (
	netA = "11111111-1111-4111-8111-111111111111"
	netB = "22222222-2222-4222-8222-222222222222"
)

// fakeSource is a Source whose answer the test changes.
type fakeSource struct {
	mu    sync.Mutex
	nodes source.Nodes
	err   error
}

func (f *fakeSource) set(nodes source.Nodes, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes, f.err = nodes, err
}

func (f *fakeSource) Networks(context.Context) (source.Nodes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes, f.err
}

func nets(ids ...string) []source.Network {
	out := make([]source.Network, 0, len(ids))
	for _, id := range ids {
		out = append(out, source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: "/var/run/netns/qdhcp-" + id})
	}
	return out
}

func v4(id string) string { return translate.ListenerName(resolve.KindNetwork, id, 4) }

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	src    *fakeSource
	poller *Poller
	snaps  *Snapshots
	cb     *Callbacks
	conn   *grpc.ClientConn
	logs   *syncBuffer
}

// start runs a real xDS server on 127.0.0.1:0 with a poller over a fake source, polled once.
func start(t *testing.T, initial source.Nodes) *harness {
	t.Helper()
	return startWith(t, harnessOptions{initial: initial, poll: true})
}

type harnessOptions struct {
	initial source.Nodes
	poll    bool  // poll once before serving
	clock   Clock // of the retry and NACK back-offs; nil: real time
}

func startWith(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	var opts []Option
	if o.clock != nil {
		opts = append(opts, WithClock(o.clock))
	}
	h := &harness{src: &fakeSource{nodes: o.initial}, snaps: NewSnapshots(log, opts...), logs: logs}
	h.cb = NewCallbacks(log, h.snaps)
	h.poller = &Poller{Source: h.src, Shared: sh, Snapshots: h.snaps, Interval: time.Hour, Log: log}
	if o.poll {
		if err := h.poller.Once(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := NewGRPCServer(ctx, h.snaps, h.cb)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, gs, lis, log) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.conn = conn
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

func listenerNames(t *testing.T, rs []*anypb.Any) []string {
	t.Helper()
	var names []string
	for _, a := range rs {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatalf("unpack listener: %v", err)
		}
		names = append(names, l.GetName())
	}
	sort.Strings(names)
	return names
}

// eventually waits (without asserting on time) until cond holds or the test's deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStateOfTheWorld(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	ctx := t.Context()
	c := sotw.NewADSClient(ctx, &corev3.Node{Id: "n1"}, resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	fetch := func() []string {
		t.Helper()
		resp, err := c.Fetch()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(); err != nil {
			t.Fatal(err)
		}
		return listenerNames(t, resp.Resources)
	}

	steps := []struct {
		name  string
		nodes source.Nodes
		want  []string
	}{
		{"initial", nil, []string{v4(netA)}},
		{"network added", source.Nodes{"n1": nets(netA, netB)}, []string{v4(netA), v4(netB)}},
		{"network removed", source.Nodes{"n1": nets(netB)}, []string{v4(netB)}},
		{"node gone from the source", source.Nodes{"other": nets(netA)}, nil},
	}
	for _, st := range steps {
		if st.nodes != nil {
			h.src.set(st.nodes, nil)
			if err := h.poller.Once(ctx); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		if diff := cmp.Diff(st.want, fetch()); diff != "" {
			t.Errorf("%s: listeners (-want +got):\n%s", st.name, diff)
		}
	}
	eventually(t, "ACKs counted", func() bool { return h.cb.Stats().ACKs >= int64(len(steps)) })
	if got := h.cb.Stats().Nodes; !cmp.Equal(got, []string{"n1"}) {
		t.Errorf("connected nodes = %v, want [n1]", got)
	}
}

func TestNackIsLoggedAndCounted(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	c := sotw.NewADSClient(t.Context(), &corev3.Node{Id: "n1"}, resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	const detail = "cannot bind 169.254.169.254:80: Address already in use"
	if err := c.Nack(detail); err != nil {
		t.Fatal(err)
	}
	eventually(t, "NACK counted", func() bool { return h.cb.Stats().NACKs == 1 })
	// The NACK is counted before its log line is written.
	eventually(t, "NACK detail logged", func() bool { return strings.Contains(h.logs.String(), detail) })
	if got := h.cb.Stats().ACKs; got != 0 {
		t.Errorf("ACKs = %d after a NACK only, want 0", got)
	}
}

func TestInconsistentSnapshotIsNeverSet(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	before := h.snaps.Version("n1")
	snap, err := h.snaps.Cache().GetSnapshot("n1")
	if err != nil {
		t.Fatal(err)
	}
	listenersBefore := snap.GetVersion(resource.ListenerType)
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	res, err := sh.Node(nets(netA, netB))
	if err != nil {
		t.Fatal(err)
	}
	res.Routes = nil // listeners now name a route that is not in the snapshot
	changed, err := h.snaps.Set(t.Context(), "n1", res)
	if err == nil || !strings.Contains(err.Error(), "not consistent") {
		t.Fatalf("Set = %v, %v; want a consistency error", changed, err)
	}
	if snap, err = h.snaps.Cache().GetSnapshot("n1"); err != nil {
		t.Fatal(err)
	}
	if got := snap.GetVersion(resource.ListenerType); got != listenersBefore || h.snaps.Version("n1") != before {
		t.Errorf("snapshot version = %s (listeners %s), want the previous %s (%s)", h.snaps.Version("n1"), got, before, listenersBefore)
	}
	if n := len(snap.GetResources(resource.ListenerType)); n != 1 {
		t.Errorf("cache holds %d listeners, want the previous 1", n)
	}
}

func TestSourceErrorKeepsLastSnapshot(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	before := h.snaps.Version("n1")
	h.src.set(nil, errors.New("neutron: 503"))
	if err := h.poller.Once(t.Context()); err == nil {
		t.Fatal("poll with a failing source succeeded")
	}
	if got := h.snaps.Version("n1"); got != before || got == "" {
		t.Errorf("version after a source error = %q, want the previous %q", got, before)
	}
	if h.poller.Failures() != 1 || !h.poller.Ready() {
		t.Errorf("failures = %d ready = %v, want 1 true", h.poller.Failures(), h.poller.Ready())
	}
}

func TestVersionIsContentDerived(t *testing.T) {
	snaps := NewSnapshots(nil)
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	res, _ := sh.Node(nets(netA, netB))
	ctx := t.Context()
	if changed, err := snaps.Set(ctx, "n1", res); err != nil || !changed {
		t.Fatalf("first Set = %v, %v", changed, err)
	}
	v1 := snaps.Version("n1")
	again, _ := sh.Node(nets(netB, netA))
	if changed, err := snaps.Set(ctx, "n1", again); err != nil || changed {
		t.Errorf("same content: Set = %v, %v; want unchanged", changed, err)
	}
	other, _ := sh.Node(nets(netA))
	if changed, err := snaps.Set(ctx, "n1", other); err != nil || !changed {
		t.Errorf("new content: Set = %v, %v; want changed", changed, err)
	}
	if snaps.Version("n1") == v1 {
		t.Error("version did not change with the content")
	}
	// Another node with the same content gets the same version.
	if _, err := snaps.Set(ctx, "n2", res); err != nil || snaps.Version("n2") != v1 {
		t.Errorf("same content on another node: version %s, want %s (err %v)", snaps.Version("n2"), v1, err)
	}
}

// TestEmptyNodeKeepsClusters: a node the source drops while its Envoy is connected gets the
// clusters only (its Envoy drops the listeners).
func TestEmptyNodeKeepsClusters(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	c := sotw.NewADSClient(t.Context(), &corev3.Node{Id: "n1"}, resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	h.src.set(source.Nodes{}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	snap, err := h.snaps.Cache().GetSnapshot("n1")
	if err != nil {
		t.Fatal(err)
	}
	if l, r, c := len(snap.GetResources(resource.ListenerType)), len(snap.GetResources(resource.RouteType)),
		len(snap.GetResources(resource.ClusterType)); l != 0 || r != 0 || c != 2 {
		t.Errorf("empty node: %d listeners, %d routes, %d clusters; want 0, 0, 2", l, r, c)
	}
}

// deltaClient drives DeltaAggregatedResources the way Envoy does with api_type DELTA_GRPC.
type deltaClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (d *deltaClient) recvAndAck() (names, removed []string) {
	d.t.Helper()
	resp, err := d.stream.Recv()
	if err != nil {
		d.t.Fatal(err)
	}
	for _, r := range resp.GetResources() {
		names = append(names, r.GetName())
	}
	sort.Strings(names)
	removed = append(removed, resp.GetRemovedResources()...)
	sort.Strings(removed)
	if err := d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
		d.t.Fatal(err)
	}
	return names, removed
}

func TestDelta(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	ctx := t.Context()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n1"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	d := &deltaClient{t: t, stream: stream}

	steps := []struct {
		name                 string
		nodes                source.Nodes
		wantSent, wantRemove []string
	}{
		{"initial: everything", nil, []string{v4(netA)}, nil},
		{"network added: only the new listener", source.Nodes{"n1": nets(netA, netB)}, []string{v4(netB)}, nil},
		{"network removed: only the removal", source.Nodes{"n1": nets(netB)}, nil, []string{v4(netA)}},
	}
	for _, st := range steps {
		if st.nodes != nil {
			h.src.set(st.nodes, nil)
			if err := h.poller.Once(ctx); err != nil {
				t.Fatal(err)
			}
		}
		sent, removed := d.recvAndAck()
		if diff := cmp.Diff(st.wantSent, sent); diff != "" {
			t.Errorf("%s: sent (-want +got):\n%s", st.name, diff)
		}
		if diff := cmp.Diff(st.wantRemove, removed); diff != "" {
			t.Errorf("%s: removed (-want +got):\n%s", st.name, diff)
		}
	}
	eventually(t, "delta ACKs counted", func() bool { return h.cb.Stats().ACKs >= int64(len(steps)) })
}

func BenchmarkSnapshot10kNetworks(b *testing.B) {
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		b.Fatal(err)
	}
	in := make([]source.Network, 10000)
	for i := range in {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		in[i] = source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: "/var/run/netns/qdhcp-" + id, Interface: "tap" + id[:11]}
	}
	ctx := context.Background()
	nodes := source.Nodes{"n1": in}
	b.ReportAllocs()
	for b.Loop() { // a fresh cmd/xds each time: every network translated, encoded and hashed
		if err := NewSnapshots(nil).Apply(ctx, sh, nodes); err != nil {
			b.Fatal(err)
		}
	}
}
