package serve

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// fakeClock records the timers Snapshots and the NACK gate start; the test fires them.
type fakeClock struct {
	mu     sync.Mutex
	timers []*fakeTimer
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped bool
	fired   bool
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{d: d, f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped && !t.fired
		t.stopped = true
		return was
	}
}

// pending returns the timers neither fired nor stopped.
func (c *fakeClock) pending() []*fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.fired {
			out = append(out, t)
		}
	}
	return out
}

// fireOne waits for exactly one pending timer, checks its duration and fires it.
func (c *fakeClock) fireOne(t *testing.T, want time.Duration) {
	t.Helper()
	eventually(t, "a back-off timer", func() bool { return len(c.pending()) > 0 })
	p := c.pending()
	if len(p) != 1 || p[0].d != want {
		var ds []time.Duration
		for _, x := range p {
			ds = append(ds, x.d)
		}
		t.Fatalf("pending timers %v, want one of %v", ds, want)
	}
	c.mu.Lock()
	p[0].fired = true
	c.mu.Unlock()
	p[0].f()
}

// connectAndAck connects go-control-plane's ADS client for node and typeURL, fetches the first
// response and ACKs it.
func connectAndAck(t *testing.T, h *harness, node *corev3.Node, typeURL string) sotw.ADSClient {
	t.Helper()
	c := sotw.NewADSClient(t.Context(), node, typeURL)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	return c
}

// envoyNACK is the error_detail of Envoy's LDS NACK for one listener (lds_api.cc).
func envoyNACK(listener, msg string) string {
	return "Error adding/updating listener(s) " + listener + ": " + msg + "\n"
}

// envoyNode is a node as Envoy of the given version names itself.
func envoyNode(id string, major, minor, patch uint32) *corev3.Node {
	return &corev3.Node{Id: id, UserAgentName: "envoy", UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
		UserAgentBuildVersion: &corev3.BuildVersion{Version: &typev3.SemanticVersion{MajorNumber: major, MinorNumber: minor, Patch: patch}}}}
}

// attempt returns the WithAttempt mark of a listener (0 without one).
func attempt(l *listenerv3.Listener) float64 {
	return l.GetMetadata().GetFilterMetadata()[translate.AttemptKey].GetFields()["attempt"].GetNumberValue()
}

// deltaStream opens a delta ADS stream for node subscribed to listeners (wildcard).
func deltaStream(t *testing.T, ctx context.Context, h *harness, node *corev3.Node) *deltaClient {
	t.Helper()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	return &deltaClient{t: t, stream: stream}
}

// recv returns the next delta response and its listeners.
func (d *deltaClient) recv() (*discoveryv3.DeltaDiscoveryResponse, []*listenerv3.Listener) {
	d.t.Helper()
	resp, err := d.stream.Recv()
	if err != nil {
		d.t.Fatal(err)
	}
	var ls []*listenerv3.Listener
	for _, r := range resp.GetResources() {
		var l listenerv3.Listener
		if err := r.GetResource().UnmarshalTo(&l); err != nil {
			d.t.Fatal(err)
		}
		ls = append(ls, &l)
	}
	return resp, ls
}

func (d *deltaClient) answer(resp *discoveryv3.DeltaDiscoveryResponse, nack string) {
	d.t.Helper()
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
	if nack != "" {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := d.stream.Send(req); err != nil {
		d.t.Fatal(err)
	}
}

func unpack(t *testing.T, resp *sotw.Response) []*listenerv3.Listener {
	t.Helper()
	var ls []*listenerv3.Listener
	for _, a := range resp.Resources {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, &l)
	}
	return ls
}

func names(ls []*listenerv3.Listener) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.GetName())
	}
	slices.Sort(out)
	return out
}

// TestNothingBeforeTheFirstGoodPoll: Envoys (state of the world and delta) that connect before the
// source ever answered get no response at all, not an empty configuration, through a failed poll;
// the first response they get is their real one. A node id the source does not know keeps waiting
// after the good poll too, and gets its configuration once the source names it.
func TestNothingBeforeTheFirstGoodPoll(t *testing.T) {
	h := startWith(t, harnessOptions{initial: source.Nodes{"n1": nets(netA)}})
	ctx := t.Context()
	c := sotw.NewADSClient(ctx, &corev3.Node{Id: "n1"}, resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	d := deltaStream(t, ctx, h, &corev3.Node{Id: "n1"})
	stranger := sotw.NewADSClient(ctx, &corev3.Node{Id: "stranger"}, resource.ClusterType)
	if err := stranger.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the three requests", func() bool { return h.cb.Stats().Requests == 3 })

	h.src.set(nil, errors.New("neutron: 503"))
	if err := h.poller.Once(ctx); err == nil {
		t.Fatal("poll with a failing source succeeded")
	}
	if st := h.cb.Stats(); st.Responses != 0 || len(h.snaps.Nodes()) != 0 {
		t.Fatalf("after a failed first poll: %d responses, snapshots %v; want none", st.Responses, h.snaps.Nodes())
	}

	h.src.set(source.Nodes{"n1": nets(netA)}, nil)
	if err := h.poller.Once(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(unpack(t, resp)); !cmp.Equal(got, []string{v4(netA)}) {
		t.Errorf("state of the world: first listeners %v, want %v", got, []string{v4(netA)})
	}
	dresp, ls := d.recv()
	if got := names(ls); !cmp.Equal(got, []string{v4(netA)}) || len(dresp.GetRemovedResources()) != 0 {
		t.Errorf("delta: first response %v (removed %v), want %v", got, dresp.GetRemovedResources(), []string{v4(netA)})
	}
	if _, err := h.snaps.Cache().GetSnapshot("stranger"); err == nil {
		t.Error("a node the source does not know has a snapshot")
	}

	h.src.set(source.Nodes{"n1": nets(netA), "stranger": nets(netB)}, nil)
	if err := h.poller.Once(ctx); err != nil {
		t.Fatal(err)
	}
	sresp, err := stranger.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(sresp.Resources) != 2 {
		t.Errorf("the node, once known: %d clusters, want 2", len(sresp.Resources))
	}
}

// TestRejectedListenerIsPushedAgain: a listener Envoy rejects is not sent back at once (state of
// the world would loop) but after the back-off, marked with its attempt, again after a longer one
// if rejected again, until Envoy accepts it; the other listeners are never resent to a delta
// client. Both protocols, with go-control-plane's ADS client and a delta stream.
func TestRejectedListenerIsPushedAgain(t *testing.T) {
	const bindErr = "failed to bind: network namespace /var/run/netns/qdhcp-x does not exist"
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			clock := &fakeClock{}
			h := startWith(t, harnessOptions{initial: source.Nodes{"n1": nets(netA, netB)}, poll: true, clock: clock})
			ctx := t.Context()
			var recv func() []*listenerv3.Listener
			var answer func(nack string)
			if mode == "sotw" {
				c := sotw.NewADSClient(ctx, &corev3.Node{Id: "n1"}, resource.ListenerType)
				if err := c.InitConnect(h.conn); err != nil {
					t.Fatal(err)
				}
				recv = func() []*listenerv3.Listener {
					resp, err := c.Fetch()
					if err != nil {
						t.Fatal(err)
					}
					return unpack(t, resp)
				}
				answer = func(nack string) {
					var err error
					if nack == "" {
						err = c.Ack()
					} else {
						err = c.Nack(nack)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
			} else {
				d := deltaStream(t, ctx, h, &corev3.Node{Id: "n1"})
				var last *discoveryv3.DeltaDiscoveryResponse
				recv = func() []*listenerv3.Listener {
					resp, ls := d.recv()
					last = resp
					return ls
				}
				answer = func(nack string) { d.answer(last, nack) }
			}

			if got := names(recv()); !cmp.Equal(got, []string{v4(netB), v4(netA)}) && !cmp.Equal(got, []string{v4(netA), v4(netB)}) {
				t.Fatalf("initial listeners %v", got)
			}
			responses := h.cb.Stats().Responses
			answer(envoyNACK(v4(netB), bindErr))
			eventually(t, "the NACK recorded", func() bool { return len(h.snaps.Rejections()) == 1 })
			if mode == "sotw" { // the NACK's watch is held, not answered with the same listeners
				eventually(t, "the rejected request held", func() bool { held, _ := h.snaps.cache.state(); return held == 1 })
			}
			if got := h.cb.Stats().Responses; got != responses {
				t.Fatalf("%d responses right after the NACK, want none", got-responses)
			}
			if !strings.Contains(h.logs.String(), "network="+netB) {
				t.Errorf("no log line names network %s:\n%s", netB, h.logs.String())
			}

			for i, wait := range []time.Duration{time.Second, 2 * time.Second} {
				clock.fireOne(t, wait)
				ls := recv()
				if mode == "delta" && !cmp.Equal(names(ls), []string{v4(netB)}) {
					t.Fatalf("delta retry %d sent %v, want only %s", i+1, names(ls), v4(netB))
				}
				var retried *listenerv3.Listener
				for _, l := range ls {
					if l.GetName() == v4(netB) {
						retried = l
					}
				}
				if retried == nil || attempt(retried) != float64(i+1) {
					t.Fatalf("retry %d: listener %s with attempt %v, want %d", i+1, v4(netB), attempt(retried), i+1)
				}
				if i == 0 {
					answer(envoyNACK(v4(netB), bindErr)) // still no namespace
					eventually(t, "the second NACK recorded", func() bool {
						r := h.snaps.Rejections()
						return len(r) == 1 && r[0].Rejections == 2
					})
				} else {
					answer("") // the namespace exists now
				}
			}
			eventually(t, "the listener accepted", func() bool { return len(h.snaps.Rejections()) == 0 })
			if got := h.snaps.Retries(); got != 2 {
				t.Errorf("retries = %d, want 2", got)
			}
			if p := clock.pending(); len(p) != 0 {
				t.Errorf("%d timers still pending after the listener was accepted", len(p))
			}
		})
	}
}

// TestRejectionNothingRetriesIsHeldWithBackoff: a NACK that names no listener of the node (here a
// cluster rejection) is answered, in state of the world, only after the back-off, not at once.
func TestRejectionNothingRetriesIsHeldWithBackoff(t *testing.T) {
	clock := &fakeClock{}
	h := startWith(t, harnessOptions{initial: source.Nodes{"n1": nets(netA)}, poll: true, clock: clock})
	c := sotw.NewADSClient(t.Context(), &corev3.Node{Id: "n1"}, resource.ClusterType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack("Error adding/updating cluster(s) nova_metadata: bad TLS file"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK held", func() bool { held, _ := h.snaps.cache.state(); return held == 1 })
	responses := h.cb.Stats().Responses
	if responses != 1 {
		t.Fatalf("%d responses before the back-off, want the first one only", responses)
	}
	clock.fireOne(t, time.Second)
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 2 {
		t.Errorf("after the back-off: %d clusters, want 2", len(resp.Resources))
	}
}

// TestEnvoyOlderThan136IsRefused: an Envoy 1.35 (which would reject the second
// 169.254.169.254:80 listener) gets no listener: its stream is closed with an error naming the
// version it needs, the refusal is counted; Envoy 1.36.0 gets both listeners.
func TestEnvoyOlderThan136IsRefused(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA, netB)})
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			before := h.cb.Stats().TooOld
			var err error
			if mode == "sotw" {
				c := sotw.NewADSClient(t.Context(), envoyNode("n1", 1, 35, 3), resource.ListenerType)
				if err := c.InitConnect(h.conn); err != nil {
					t.Fatal(err)
				}
				_, err = c.Fetch()
			} else {
				d := deltaStream(t, t.Context(), h, envoyNode("n1", 1, 35, 3))
				_, err = d.stream.Recv()
			}
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "Envoy 1.36.0 or newer") {
				t.Fatalf("Envoy 1.35.3: %v; want FailedPrecondition naming 1.36.0", err)
			}
			if got := h.cb.Stats().TooOld - before; got != 1 {
				t.Errorf("refusals counted: %d, want 1", got)
			}
		})
	}
	c := sotw.NewADSClient(t.Context(), envoyNode("n1", 1, 36, 0), resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.Resources); n != 2 {
		t.Errorf("Envoy 1.36.0: %d listeners, want 2", n)
	}
	if !strings.Contains(h.logs.String(), "min_version="+MinEnvoyVersion) {
		t.Errorf("the refusal log does not name %s:\n%s", MinEnvoyVersion, h.logs.String())
	}
}

// TestRecreatedNamespaceChangesTheListener: a namespace of a new generation is sent again to a
// delta client (only that listener), with another namespace file path.
func TestRecreatedNamespaceChangesTheListener(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA, netB)})
	d := deltaStream(t, t.Context(), h, &corev3.Node{Id: "n1"})
	resp, _ := d.recv()
	d.answer(resp, "")
	recreated := nets(netA, netB)
	recreated[0].NamespaceGeneration = 1
	h.src.set(source.Nodes{"n1": recreated}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, ls := d.recv()
	if got := names(ls); !cmp.Equal(got, []string{v4(netA)}) {
		t.Fatalf("sent %v, want only %s", got, v4(netA))
	}
	path := ls[0].GetAddress().GetSocketAddress().GetNetworkNamespaceFilepath()
	if path == recreated[0].NamespacePath {
		t.Errorf("namespace path %q unchanged", path)
	}
}

// TestStateOfUnknownNodesIsDropped: made-up node ids connecting and disconnecting (both protocols,
// some NACKing) leave nothing behind: no cache status, snapshot, rejection counter, stream or
// metric series beyond the known node's. A known node the source drops keeps an empty snapshot
// while connected and is forgotten when it disconnects.
func TestStateOfUnknownNodesIsDropped(t *testing.T) {
	h := start(t, source.Nodes{"n1": nets(netA), "n2": nets(netB)})
	baseline := func() {
		t.Helper()
		eventually(t, "all streams closed", func() bool { return h.cb.Stats().Streams == 0 })
		keys := h.snaps.Cache().GetStatusKeys()
		slices.Sort(keys)
		held, failures := h.snaps.cache.state()
		h.snaps.mu.Lock()
		streams := len(h.snaps.streams)
		h.snaps.mu.Unlock()
		var nodes []string
		for _, n := range h.snaps.Nodes() {
			nodes = append(nodes, n.Node)
		}
		if len(keys) > 2 || held != 0 || failures != 0 || streams != 0 || !cmp.Equal(nodes, []string{"n1", "n2"}) {
			t.Fatalf("state left: cache status %v, held %d, rejection counters %d, streams %d, snapshots %v",
				keys, held, failures, streams, nodes)
		}
	}
	const n = 60
	for i := range n {
		ctx, cancel := context.WithCancel(t.Context())
		node := &corev3.Node{Id: fmt.Sprintf("made-up-%d", i)}
		if i%2 == 0 {
			c := sotw.NewADSClient(ctx, node, resource.ListenerType)
			if err := c.InitConnect(h.conn); err != nil {
				t.Fatal(err)
			}
		} else {
			d := deltaStream(t, ctx, h, node)
			if i%3 == 0 { // a NACK for a response never sent
				d.answer(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: resource.ListenerType, Nonce: "1"}, envoyNACK(v4(netA), "x"))
			}
		}
		eventually(t, "the made-up node's requests", func() bool { return len(h.cb.Stats().Nodes) == 1 })
		cancel()
		eventually(t, "the stream closed", func() bool { return h.cb.Stats().Streams == 0 })
	}
	baseline()

	c := connectAndAck(t, h, &corev3.Node{Id: "n2"}, resource.ListenerType)
	h.src.set(source.Nodes{"n1": nets(netA)}, nil)
	if err := h.poller.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 0 {
		t.Errorf("a dropped, connected node: %d listeners, want 0", len(resp.Resources))
	}
	if h.snaps.Version("n2") == "" {
		t.Fatal("the dropped node lost its (empty) snapshot while connected")
	}
	h.conn.Close() // n2's Envoy goes away
	eventually(t, "n2 forgotten", func() bool { return h.snaps.Version("n2") == "" })
	if keys := h.snaps.Cache().GetStatusKeys(); slices.Contains(keys, "n2") {
		t.Errorf("cache status of the forgotten node kept: %v", keys)
	}
}

func TestBackoff(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, DefaultBackoff.Delay(n))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	for i := range want {
		want[i] *= time.Second
	}
	if !cmp.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
}

func TestRejectedListeners(t *testing.T) {
	for detail, want := range map[string]map[string]string{
		envoyNACK(v4(netA), "bind: Address in use"): {v4(netA): "bind: Address in use"},
		"Error adding/updating listener(s) " + v4(netA) + ": one\n" + v4(netB) + ": two\nmore of two\n": {
			v4(netA): "one", v4(netB): "two\nmore of two"},
		"Error adding/updating cluster(s) nova_metadata: x": nil,
		"bind: Address already in use":                      nil,
	} {
		if got := RejectedListeners(detail); !cmp.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("RejectedListeners(%q) = %v, want %v", detail, got, want)
		}
	}
}
