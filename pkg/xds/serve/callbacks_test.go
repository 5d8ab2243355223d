package serve

import (
	"context"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

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
