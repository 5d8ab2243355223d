package serve

import (
	"context"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

func newShared(t testing.TB) *translate.Shared {
	t.Helper()
	sh, err := translate.NewShared(translate.DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

func snapshotOf(t *testing.T, s *Snapshots, node string) cache.ResourceSnapshot {
	t.Helper()
	snap, err := s.Cache().GetSnapshot(node)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func builtCount(s *Snapshots) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.built)
}

// TestServedIsWhatTranslateBuilds: what a state-of-the-world client receives is, resource for
// resource, what translate builds for the node (the served encoding is the listener's), and
// go-control-plane's own Snapshot.Consistent accepts those resources.
func TestServedIsWhatTranslateBuilds(t *testing.T) {
	ipv6 := nets(netA, netB)
	ipv6[1].Interface = "tap22222222-22"
	h := start(t, source.Nodes{"n1": ipv6})
	want, err := newShared(t).Node(ipv6)
	if err != nil {
		t.Fatal(err)
	}
	byType := map[resource.Type][]types.Resource{}
	for _, l := range want.Listeners {
		byType[resource.ListenerType] = append(byType[resource.ListenerType], l)
	}
	for _, r := range want.Routes {
		byType[resource.RouteType] = append(byType[resource.RouteType], r)
	}
	for _, c := range want.Clusters {
		byType[resource.ClusterType] = append(byType[resource.ClusterType], c)
	}
	ref, err := cache.NewSnapshot("x", byType)
	if err != nil {
		t.Fatal(err)
	}
	if err := ref.Consistent(); err != nil {
		t.Fatalf("go-control-plane's Consistent on the same resources: %v", err)
	}
	for typ, items := range byType {
		resp := fetchAll(t, h, typ)
		if len(resp) != len(items) {
			t.Fatalf("%s: %d resources, want %d", typ, len(resp), len(items))
		}
		for _, it := range items {
			got, ok := resp[cache.GetResourceName(it)]
			if !ok {
				t.Fatalf("%s: %s not served", typ, cache.GetResourceName(it))
			}
			gotMsg := it.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(got, gotMsg); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(it, gotMsg, protocmp.Transform()); diff != "" {
				t.Errorf("%s %s (-translate +served):\n%s", typ, cache.GetResourceName(it), diff)
			}
			if b, _ := cache.MarshalResource(it); !slices.Equal(b, got) {
				t.Errorf("%s %s: served bytes are not the deterministic encoding", typ, cache.GetResourceName(it))
			}
		}
	}
}

// fetchAll returns the resources of typ the cache answers for n1 (by name, encoded), as a state of
// the world response carries them.
func fetchAll(t *testing.T, h *harness, typ string) map[string][]byte {
	t.Helper()
	resp, err := h.snaps.Cache().Fetch(t.Context(), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n1"}, TypeUrl: typ})
	if err != nil {
		t.Fatal(err)
	}
	dr, err := resp.GetDiscoveryResponse()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, a := range dr.GetResources() {
		m := resourceOf(typ)
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		out[cache.GetResourceName(m)] = a.GetValue()
	}
	return out
}

func resourceOf(typ string) proto.Message {
	switch typ {
	case resource.ListenerType:
		return &listenerv3.Listener{}
	case resource.RouteType:
		return &routev3.RouteConfiguration{}
	default:
		return &clusterv3.Cluster{}
	}
}

// TestUnchangedNodesCostNothing: a poll that finds the same networks translates, encodes, hashes
// and sets nothing: no allocation at all, the very same snapshots in the cache.
func TestUnchangedNodesCostNothing(t *testing.T) {
	s := NewSnapshots(nil)
	sh := newShared(t)
	nodes := source.Nodes{"n1": nets(netA, netB), "n2": nets(netB), "empty": nil}
	ctx := context.Background()
	if err := s.Apply(ctx, sh, nodes); err != nil {
		t.Fatal(err)
	}
	before := map[string]cache.ResourceSnapshot{}
	for n := range nodes {
		before[n] = snapshotOf(t, s, n)
	}
	allocs := testing.AllocsPerRun(10, func() {
		if err := s.Apply(ctx, sh, nodes); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("an unchanged poll allocates %v times, want 0 (no work)", allocs)
	}
	// A new answer of the source with the same content (another map, other slices) is unchanged too.
	again := source.Nodes{"n1": nets(netA, netB), "n2": nets(netB), "empty": nil}
	if err := s.Apply(ctx, sh, again); err != nil {
		t.Fatal(err)
	}
	for n, snap := range before {
		if snapshotOf(t, s, n) != snap {
			t.Errorf("node %s: a new snapshot was set for the same networks", n)
		}
	}
}

// TestNetworkBuiltOnceAndShared: nodes serving the same network (same namespace path) share one
// built listener; the same network id in another namespace is another listener; a node whose
// networks change gets a new snapshot while the others keep theirs; listeners no node serves any
// more are dropped.
func TestNetworkBuiltOnceAndShared(t *testing.T) {
	s := NewSnapshots(nil)
	sh := newShared(t)
	ctx := context.Background()
	elsewhere := nets(netA)
	elsewhere[0].NamespacePath = "/run/other/qdhcp-" + netA
	if err := s.Apply(ctx, sh, source.Nodes{"n1": nets(netA, netB), "n2": nets(netA), "n3": elsewhere}); err != nil {
		t.Fatal(err)
	}
	lds := func(node string) map[string]types.Resource {
		return snapshotOf(t, s, node).GetResources(resource.ListenerType)
	}
	if lds("n1")[v4(netA)] != lds("n2")[v4(netA)] {
		t.Error("n1 and n2 serve the same network but hold two listeners")
	}
	if lds("n1")[v4(netA)] == lds("n3")[v4(netA)] {
		t.Error("n3's network is in another namespace but shares n1's listener")
	}
	if got := builtCount(s); got != 3 {
		t.Errorf("%d networks built, want 3 (netA, netB, netA elsewhere)", got)
	}

	n2 := snapshotOf(t, s, "n2")
	if err := s.Apply(ctx, sh, source.Nodes{"n1": nets(netA), "n2": nets(netA), "n3": elsewhere}); err != nil {
		t.Fatal(err)
	}
	if snapshotOf(t, s, "n2") != n2 {
		t.Error("n2's networks did not change, yet it got a new snapshot")
	}
	if _, ok := lds("n1")[v4(netB)]; ok {
		t.Error("n1 still has netB")
	}
	if got := builtCount(s); got != 2 {
		t.Errorf("%d networks kept, want 2: netB is served by nobody", got)
	}
	if err := s.Apply(ctx, sh, source.Nodes{}); err != nil {
		t.Fatal(err)
	}
	if got := builtCount(s); got != 0 || len(s.Nodes()) != 0 {
		t.Errorf("after every node left the source: %d networks, nodes %v; want none", got, s.Nodes())
	}
}

// TestListenerChangeKeepsOtherTypes: a new network is a new listeners version only: the clusters
// and routes keep theirs, so state of the world does not send them again to every node. The
// cluster client's next response is the one a real cluster change (other settings) brings.
func TestListenerChangeKeepsOtherTypes(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	before := snapshotOf(t, h.snaps, "n1")
	c := connectAndAck(t, h, &corev3.Node{Id: "n1"}, resource.ClusterType)
	h.src.set(source.Nodes{"n1": nets(netA, netB)}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	after := snapshotOf(t, h.snaps, "n1")
	for _, typ := range []string{resource.ClusterType, resource.RouteType} {
		if before.GetVersion(typ) != after.GetVersion(typ) {
			t.Errorf("%s version changed with the listeners: %s -> %s", typ, before.GetVersion(typ), after.GetVersion(typ))
		}
	}
	if before.GetVersion(resource.ListenerType) == after.GetVersion(resource.ListenerType) {
		t.Error("listeners version did not change")
	}

	settings := translate.DefaultSettings()
	settings.Nova.Port = 18775
	sh, err := translate.NewShared(settings)
	if err != nil {
		t.Fatal(err)
	}
	h.poller.Shared = sh
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Resources {
		var cl clusterv3.Cluster
		if err := a.UnmarshalTo(&cl); err != nil {
			t.Fatal(err)
		}
		if cl.GetName() == "nova_metadata" {
			port := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()
			if port != 18775 {
				t.Errorf("the cluster client's next response has nova on port %d: clusters were sent again for a listener change", port)
			}
		}
	}
}

// TestDeltaReconnectGetsNothingItHas: the resource versions cmd/xds keeps are those
// go-control-plane's delta server sends, so an Envoy that reconnects with what it has
// (initial_resource_versions) is sent nothing again.
func TestDeltaReconnectGetsNothingItHas(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA, netB)})
	ctx, cancel := context.WithCancel(t.Context())
	d := deltaStream(t, ctx, h, &corev3.Node{Id: "n1"})
	resp, _ := d.recv()
	have := map[string]string{}
	for _, r := range resp.GetResources() {
		have[r.GetName()] = r.GetVersion()
	}
	d.answer(resp, "")
	cancel()

	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n1"}, TypeUrl: resource.ListenerType,
		InitialResourceVersions: have}); err != nil {
		t.Fatal(err)
	}
	d2 := &deltaClient{t: t, stream: stream}
	// The first wildcard request is always answered (Envoy needs it to finish initializing).
	resp2, ls := d2.recv()
	if len(ls) != 0 || len(resp2.GetRemovedResources()) != 0 {
		t.Errorf("reconnect with what it has: sent %v, removed %v; want nothing", names(ls), resp2.GetRemovedResources())
	}
	d2.answer(resp2, "")
	h.src.set(source.Nodes{"n1": nets(netA)}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp3, ls := d2.recv()
	if len(ls) != 0 || !cmp.Equal(resp3.GetRemovedResources(), []string{v4(netB)}) {
		t.Errorf("after netB left: sent %v, removed %v; want only %s removed", names(ls), resp3.GetRemovedResources(), v4(netB))
	}
}

// TestFailedNodeKeepsItsSnapshot: a node one of whose networks cannot be translated keeps its
// previous snapshot, whole (never the networks that did translate); the other nodes are set.
func TestFailedNodeKeepsItsSnapshot(t *testing.T) {
	s := NewSnapshots(nil)
	sh := newShared(t)
	ctx := context.Background()
	if err := s.Apply(ctx, sh, source.Nodes{"n1": nets(netA), "n2": nets(netA)}); err != nil {
		t.Fatal(err)
	}
	before := snapshotOf(t, s, "n1")
	bad := append(nets(netB), source.Network{Kind: resolve.KindNetwork, ID: netA, NamespacePath: "/run/netns/x", Interface: "bad name"})
	err := s.Apply(ctx, sh, source.Nodes{"n1": bad, "n2": nets(netA, netB)})
	if err == nil {
		t.Fatal("Apply with an untranslatable network succeeded")
	}
	if snapshotOf(t, s, "n1") != before {
		t.Error("n1 lost its snapshot to a failed translation")
	}
	if _, ok := snapshotOf(t, s, "n2").GetResources(resource.ListenerType)[v4(netB)]; !ok {
		t.Error("n2 did not get netB")
	}
}

// TestParallelBuildMatchesTranslate: networks built on several CPUs at once (they share the HTTP
// connection manager's pieces; the race detector watches) give each node what translate gives it.
func TestParallelBuildMatchesTranslate(t *testing.T) {
	settings := translate.DefaultSettings()
	settings.RateLimit.Enabled, settings.RateLimit.IPVersions = true, []int{4}
	sh, err := translate.NewShared(settings)
	if err != nil {
		t.Fatal(err)
	}
	nodes := fleet(2, 64, false)
	for _, nets := range nodes {
		for i := range nets {
			if i%2 == 0 {
				nets[i].Interface = "tap0"
			}
		}
	}
	s := NewSnapshots(nil)
	if err := s.Apply(context.Background(), sh, nodes); err != nil {
		t.Fatal(err)
	}
	for node, nets := range nodes {
		want, err := sh.Node(nets)
		if err != nil {
			t.Fatal(err)
		}
		got := snapshotOf(t, s, node).GetResources(resource.ListenerType)
		if len(got) != len(want.Listeners) {
			t.Fatalf("%s: %d listeners, want %d", node, len(got), len(want.Listeners))
		}
		for _, l := range want.Listeners {
			b, err := cache.MarshalResource(l)
			if err != nil {
				t.Fatal(err)
			}
			g, ok := got[l.GetName()]
			if !ok {
				t.Fatalf("%s: no %s", node, l.GetName())
			}
			if gb, _ := cache.MarshalResource(g); !slices.Equal(gb, b) {
				t.Errorf("%s: %s differs from translate's", node, l.GetName())
			}
		}
	}
}
