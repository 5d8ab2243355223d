package serve

import (
	"context"
	"log/slog"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// nackGate wraps the snapshot cache so that a rejection is not answered at once with what was
// just rejected. In state of the world, Envoy's NACK carries the version it still runs
// (version_info of the last accepted response), and go-control-plane's snapshot cache answers
// every request whose version differs from the snapshot's at once (pkg/cache/v3/simple.go,
// CreateWatch): the same snapshot goes back, Envoy rejects it again, and the two loop as fast as
// the network allows. The gate holds the watch a NACK opens until the node's snapshot changes
// (what a listener retry does, see Snapshots) or, for a rejection nothing will retry (another
// type, a listener the node does not have), until a back-off of the node's consecutive rejections
// of that type has passed. Delta needs no gate: its cache answers only a change
// (CreateDeltaWatch), so a NACK opens a watch that waits.
type nackGate struct {
	cache.SnapshotCache
	backoff Backoff
	clock   Clock
	log     *slog.Logger
	// retrying reports whether a listener retry of node is scheduled (it will set a new snapshot).
	retrying func(node string) bool

	mu       sync.Mutex
	held     map[string]map[*heldWatch]struct{} // node -> watches waiting
	failures map[string]map[string]int          // node -> type URL (typeLabel) -> consecutive NACKs
}

func newNACKGate(c cache.SnapshotCache, b Backoff, clock Clock, log *slog.Logger) *nackGate {
	return &nackGate{SnapshotCache: c, backoff: b, clock: clock, log: log,
		held: map[string]map[*heldWatch]struct{}{}, failures: map[string]map[string]int{}}
}

// heldWatch is a state-of-the-world watch opened by a NACK and not yet handed to the cache.
type heldWatch struct {
	g    *nackGate
	node string
	req  *cache.Request
	sub  cache.Subscription
	ch   chan cache.Response

	mu          sync.Mutex
	released    bool
	canceled    bool
	stopTimer   func() bool
	innerCancel func()
}

// CreateWatch implements cache.ConfigWatcher.
func (g *nackGate) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	// Rejections are counted per type cmd/xds serves, all others together: a client may send any
	// type URL, and the counters of a node the source knows live as long as the node.
	node, typ := req.GetNode().GetId(), typeLabel(req.GetTypeUrl())
	if req.GetErrorDetail() == nil {
		if req.GetResponseNonce() != "" { // an ACK ends the rejections of this type
			g.mu.Lock()
			delete(g.failures[node], typ)
			if len(g.failures[node]) == 0 {
				delete(g.failures, node)
			}
			g.mu.Unlock()
		}
		return g.SnapshotCache.CreateWatch(req, sub, ch)
	}
	retrying := typ == resource.ListenerType && g.retrying != nil && g.retrying(node)
	w := &heldWatch{g: g, node: node, req: req, sub: sub, ch: ch}
	g.mu.Lock()
	if g.failures[node] == nil {
		g.failures[node] = map[string]int{}
	}
	g.failures[node][typ]++
	n := g.failures[node][typ]
	if g.held[node] == nil {
		g.held[node] = map[*heldWatch]struct{}{}
	}
	g.held[node][w] = struct{}{}
	g.mu.Unlock()
	if !retrying {
		w.mu.Lock()
		w.stopTimer = g.clock.AfterFunc(g.backoff.Delay(n), w.release)
		w.mu.Unlock()
	}
	return w.cancel, nil
}

// SetSnapshot implements cache.SnapshotCache: the watches the node's rejections hold are answered
// from the new snapshot.
func (g *nackGate) SetSnapshot(ctx context.Context, node string, snap cache.ResourceSnapshot) error {
	err := g.SnapshotCache.SetSnapshot(ctx, node, snap)
	g.mu.Lock()
	ws := g.held[node]
	delete(g.held, node)
	g.mu.Unlock()
	for w := range ws {
		w.release()
	}
	return err
}

// ClearSnapshot implements cache.SnapshotCache and forgets the node's rejections.
func (g *nackGate) ClearSnapshot(node string) {
	g.mu.Lock()
	ws := g.held[node]
	delete(g.held, node)
	delete(g.failures, node)
	g.mu.Unlock()
	for w := range ws {
		w.cancel()
	}
	g.SnapshotCache.ClearSnapshot(node)
}

// state returns the nodes with held watches or counted rejections (tests check it is bounded).
func (g *nackGate) state() (held, failures int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held), len(g.failures)
}

func (g *nackGate) forget(w *heldWatch) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.held[w.node], w)
	if len(g.held[w.node]) == 0 {
		delete(g.held, w.node)
	}
}

// release hands the watch to the cache, which answers it when the snapshot's version differs from
// the one Envoy runs.
func (w *heldWatch) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.released || w.canceled {
		return
	}
	w.released = true
	if w.stopTimer != nil {
		w.stopTimer()
	}
	w.g.forget(w)
	cancel, err := w.g.SnapshotCache.CreateWatch(w.req, w.sub, w.ch)
	if err != nil {
		w.g.log.Error("answer a rejected request", "node", w.node, "type", w.req.GetTypeUrl(), "error", err)
		return
	}
	w.innerCancel = cancel
}

// cancel is the watch's cancel function for the xDS server (a new request of the type, or the
// stream's end).
func (w *heldWatch) cancel() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.canceled {
		return
	}
	w.canceled = true
	if w.stopTimer != nil {
		w.stopTimer()
	}
	if w.innerCancel != nil {
		w.innerCancel()
	}
	w.g.forget(w)
}
