package serve

import (
	"context"
	"fmt"
	"slices"
	"testing"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// TestSotWAndDeltaStreamsAreFollowedApart: go-control-plane numbers state-of-the-world and delta
// streams with separate counters, so a fleet mixing both has two streams 1, two streams 2 ...
// at once. Each is followed on its own: both nodes are served and connected, and closing one
// stream does not end what is kept for the other.
func TestSotWAndDeltaStreamsAreFollowedApart(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA), "n2": nets(netB)})
	connectAndAck(t, h, &corev3.Node{Id: "n1"}, resource.ListenerType) // sotw stream 1
	ctx, cancel := context.WithCancel(t.Context())
	d := deltaStream(t, ctx, h, &corev3.Node{Id: "n2"}) // delta stream 1
	resp, ls := d.recv()
	if got := names(ls); !slices.Equal(got, []string{v4(netB)}) {
		t.Fatalf("delta node n2 got %v", got)
	}
	d.answer(resp, "")
	eventually(t, "the ACKs", func() bool { return h.cb.Stats().ACKs == 2 })
	if st := h.cb.Stats(); st.Streams != 2 || !slices.Equal(st.Nodes, []string{"n1", "n2"}) {
		t.Errorf("streams %d, nodes %v; want 2 streams of n1 and n2", st.Streams, st.Nodes)
	}
	cancel() // n2's delta stream ends
	eventually(t, "the delta stream closed", func() bool { return h.cb.Stats().Streams == 1 })
	if st := h.cb.Stats(); !slices.Equal(st.Nodes, []string{"n1"}) {
		t.Errorf("after n2's stream closed, connected nodes %v, want [n1]", st.Nodes)
	}
	h.snaps.mu.Lock()
	open := h.snaps.streams["n1"]
	h.snaps.mu.Unlock()
	if open != 1 {
		t.Errorf("n1 has %d open streams recorded, want 1", open)
	}
}

// TestStreamsKeepOnlyTheNodeFieldsCmdXDSReads: Envoy's first request names every extension
// compiled into it (a few hundred entries, tens of KiB on the wire and ~100 KiB decoded), and
// go-control-plane keeps that node for the life of the stream. What the cache keeps of a node
// connected over state of the world and over delta is what cmd/xds reads: id, cluster, user agent
// and build version, locality; and the stream works as before.
func TestStreamsKeepOnlyTheNodeFieldsCmdXDSReads(t *testing.T) {
	envoyLike := func(id string) *corev3.Node {
		n := envoyNode(id, 1, 36, 0)
		n.Cluster, n.Locality = "metaproxy", &corev3.Locality{Zone: "az1"}
		for i := range 400 {
			n.Extensions = append(n.Extensions, &corev3.Extension{Name: fmt.Sprintf("envoy.filters.http.ext_%d", i),
				Category: "envoy.filters.http", TypeUrls: []string{fmt.Sprintf("envoy.extensions.filters.http.ext_%d.v3.Config", i)}})
		}
		n.ClientFeatures = []string{"envoy.lb.does_not_support_overprovisioning"}
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"k": structpb.NewStringValue("v")}}
		n.DynamicParameters = map[string]*xdscorev3.ContextParams{"lds": {Params: map[string]string{"a": "b"}}}
		return n
	}
	h := start(t, source.Nodes{"n1": nets(netA), "n2": nets(netB)})
	connectAndAck(t, h, envoyLike("n1"), resource.ListenerType)
	d := deltaStream(t, t.Context(), h, envoyLike("n2"))
	resp, ls := d.recv()
	if got := names(ls); !slices.Equal(got, []string{v4(netB)}) {
		t.Fatalf("delta node n2 got %v", got)
	}
	d.answer(resp, "")
	eventually(t, "the ACKs", func() bool { return h.cb.Stats().ACKs == 2 })
	for _, id := range []string{"n1", "n2"} {
		kept := h.snaps.Cache().GetStatusInfo(id).GetNode()
		want := envoyNode(id, 1, 36, 0)
		want.Cluster, want.Locality = "metaproxy", &corev3.Locality{Zone: "az1"}
		if !proto.Equal(kept, want) {
			t.Errorf("node %s kept as %v (%d bytes), want %v", id, kept, proto.Size(kept), want)
		}
	}
}
