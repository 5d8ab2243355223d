package serve

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// Hostile xDS clients against the plain-text server (a UNIX socket or loopback, and what
// --node-binding none leaves: no NodeAuthorizer in front of go-control-plane). Whatever they send,
// the state cmd/xds keeps stays bounded by the nodes the source knows and the streams open.

// boundedCtx bounds a hostile client's stream: a server that never ends it fails the test
// (DeadlineExceeded) instead of hanging it.
func boundedCtx(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), 10*time.Second)
}

// sotwStream opens a raw state-of-the-world ADS stream.
func sotwStream(t *testing.T, ctx context.Context, h *harness) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// streamEnd receives until the stream ends and returns why.
func streamEnd[T any](recv func() (T, error)) error {
	for {
		if _, err := recv(); err != nil {
			return err
		}
	}
}

// onlyKnownNodesKept waits for every stream to close, then checks that the snapshot cache keeps a
// status for none but the known nodes.
func onlyKnownNodesKept(t *testing.T, h *harness, known ...string) {
	t.Helper()
	eventually(t, "the streams closed", func() bool { return h.cb.Stats().Streams == 0 })
	var left []string
	for _, k := range h.snaps.Cache().GetStatusKeys() {
		if !slices.Contains(known, k) {
			left = append(left, k)
		}
	}
	if len(left) != 0 {
		slices.Sort(left)
		t.Errorf("cache status kept for node ids the source does not know: %q", left)
	}
}

// TestAStreamCannotChangeItsNodeID: a client that names another node id on every request of one
// stream (state of the world and delta) has its stream ended at the first change, and leaves no
// cache status for the ids it made up once it is gone. Without the rule each id got a status entry
// in go-control-plane's cache that nothing ever removed (only the stream's first node is followed).
func TestAStreamCannotChangeItsNodeID(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := boundedCtx(t)
			defer cancel()
			var send func(node *corev3.Node) error
			var recvErr func() error
			if mode == "sotw" {
				st := sotwStream(t, ctx, h)
				send = func(node *corev3.Node) error {
					return st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
				}
				recvErr = func() error { return streamEnd(st.Recv) }
			} else {
				st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				send = func(node *corev3.Node) error {
					return st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
				}
				recvErr = func() error { return streamEnd(st.Recv) }
			}
			if err := send(&corev3.Node{Id: "made-up-" + mode}); err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				if send(&corev3.Node{Id: fmt.Sprintf("made-up-%s-%d", mode, i)}) != nil {
					break // the server ended the stream
				}
			}
			if err := recvErr(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "node id changed") {
				t.Errorf("stream changing its node id: %v, want InvalidArgument saying the node id changed", err)
			}
			onlyKnownNodesKept(t, h, "n1")
		})
	}
}

// TestAStreamMustNameItsNode: a stream whose first request names no node id (both protocols) is
// ended; nothing is kept under the empty id.
func TestAStreamMustNameItsNode(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	ctx, cancel := boundedCtx(t)
	defer cancel()
	st := sotwStream(t, ctx, h)
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "names no node id") {
		t.Errorf("sotw without a node: %v, want InvalidArgument", err)
	}
	d, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Cluster: "metaproxy"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta with a node without id: %v, want InvalidArgument", err)
	}
	onlyKnownNodesKept(t, h, "n1")
}

// TestResourceTypesPerStreamAreBounded: every new type URL on a stream is a watch go-control-plane
// keeps until the stream ends; a client inventing type URLs has its stream ended once it asks for
// more types than Envoy ever does, and NACKs of invented types do not grow the back-off state.
func TestResourceTypesPerStreamAreBounded(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	ctx, cancel := boundedCtx(t)
	defer cancel()
	st := sotwStream(t, ctx, h)
	node := &corev3.Node{Id: "n1"}
	var sendErr error
	for i := 0; i < 10*maxTypesPerStream && sendErr == nil; i++ {
		sendErr = st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: fmt.Sprintf("type.example/invented.%d", i)})
	}
	if err := streamEnd(st.Recv); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a stream asking for %d types: %v, want ResourceExhausted", 10*maxTypesPerStream, err)
	}
	if w := h.snaps.Cache().GetStatusInfo("n1").GetNumWatches(); w > maxTypesPerStream {
		t.Errorf("%d watches held for one stream, want at most %d", w, maxTypesPerStream)
	}

	// NACKs of invented types over several streams: the back-off counters stay per served type.
	for s := range 5 {
		ctx, cancel := context.WithCancel(t.Context())
		st := sotwStream(t, ctx, h)
		for i := range maxTypesPerStream {
			st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: fmt.Sprintf("type.example/nacked.%d.%d", s, i),
				ResponseNonce: "1", ErrorDetail: &statuspb.Status{Message: "no"}})
		}
		eventually(t, "the NACKs", func() bool { return h.cb.Stats().NACKs >= int64((s+1)*maxTypesPerStream) })
		cancel()
		eventually(t, "the stream closed", func() bool { return h.cb.Stats().Streams == 0 })
	}
	h.snaps.cache.mu.Lock()
	counters := len(h.snaps.cache.failures["n1"])
	h.snaps.cache.mu.Unlock()
	if counters > 5 {
		t.Errorf("%d back-off counters for node n1 after NACKs of invented types, want at most one per served type", counters)
	}
}

// TestNACKDetailIsBounded: a NACK's error detail is the client's text; Envoy truncates its own to
// 4096 bytes (Config::Utility::truncateGrpcStatusMessage), so cmd/xds never logs or parses more
// than that. A 1 MiB detail naming 50,000 listeners the node does not have costs a few log lines.
func TestNACKDetailIsBounded(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA)})
	c := connectAndAck(t, h, &corev3.Node{Id: "n1"}, resource.ListenerType)
	var b strings.Builder
	b.WriteString("Error adding/updating listener(s) ")
	for i := 0; b.Len() < 1<<20; i++ {
		fmt.Fprintf(&b, "invented-%d: no\n", i)
	}
	before := len(h.logs.String())
	nacks := h.cb.Stats().NACKs
	if err := c.Nack(b.String()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK", func() bool { return h.cb.Stats().NACKs > nacks })
	// The verdict is handled once the rejection is held (the gate's watch follows the callback).
	eventually(t, "the rejection held", func() bool { held, _ := h.snaps.cache.state(); return held == 1 })
	if grown := len(h.logs.String()) - before; grown > 64<<10 {
		t.Errorf("one NACK of %d bytes wrote %d bytes of log, want at most 64 KiB", b.Len(), grown)
	}
}
